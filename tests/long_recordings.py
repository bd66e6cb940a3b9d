"""Long recordings for tests and benchmarks: real coughs from the cough data set placed
at known times over a quiet real-sounding background (low noise), as 16 kHz mono
16-bit WAV, with the placements written down as they are made."""

from __future__ import annotations

import io
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.audio import decode

SR = 16000


@dataclass(frozen=True)
class Night:
    samples: np.ndarray  # float32
    coughs: list[tuple[float, float]]  # (start_s, end_s) of each placed clip

    def wav(self) -> bytes:
        return wav_bytes(self.samples)


def wav_bytes(samples: np.ndarray) -> bytes:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SR)
        out.writeframes(pcm)
    return buf.getvalue()


def clear_coughs(
    files: Sequence[Path], detector: object, count: int, max_s: float = 3.0
) -> list[np.ndarray]:
    """Real cough clips the detector finds on their own (its window score at or above its
    threshold), loudness-normalised: so a test of counting tests the counting."""
    found: list[np.ndarray] = []
    threshold = detector.manifest.event_threshold  # type: ignore[attr-defined]
    for path in files:
        try:
            clip = decode(path.read_bytes(), SR).samples
        except Exception:
            continue
        if not SR * 0.5 <= len(clip) <= SR * max_s:
            continue
        clip = (clip / (np.abs(clip).max() + 1e-9) * 0.5).astype(np.float32)
        if float(detector.window_scores(clip).max()) >= threshold + 0.2:  # type: ignore[attr-defined]
            found.append(clip)
        if len(found) >= count:
            break
    return found


def night(seconds: float, clips: Sequence[np.ndarray], at: Sequence[float], seed: int = 0) -> Night:
    """``clips[i]`` placed at ``at[i]`` seconds over ``seconds`` of quiet noise."""
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal(int(seconds * SR)) * 0.002).astype(np.float32)
    placed = []
    for clip, start in zip(clips, at, strict=False):
        i = int(start * SR)
        samples[i : i + len(clip)] += clip[: max(0, len(samples) - i)]
        placed.append((start, start + len(clip) / SR))
    return Night(samples, placed)
