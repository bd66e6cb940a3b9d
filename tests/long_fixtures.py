"""What the long-recording tests share: the test detector, a night with coughs placed
on segment edges, and the events the service must find in it (computed here segment
by segment and joined, exactly as the fan-out must, and checked against the whole
recording run at once)."""

from __future__ import annotations

import io
import json
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml import events
from shared.config import PROJECT_ROOT, Settings
from tests.conftest import COUGH_DIR, YAMNET_MODEL, require
from tests.detector import yamnet_cough_bundle
from tests.long_recordings import clear_coughs, night

SEGMENT_S = 30.0  # 62 windows of 0.48 s: several segments in a short test recording
SEGMENT_WINDOWS = 62
EDGE_S = SEGMENT_WINDOWS * 0.48  # where segment 1 starts


@dataclass(frozen=True)
class LongCase:
    detector: Path
    wav: bytes
    expected: list[tuple[float, float, float]]  # (start_s, end_s, score)
    edge_events: int  # expected events that span a segment edge


def _samples_of(data: bytes) -> np.ndarray:
    with wave.open(io.BytesIO(data)) as w:
        pcm = w.readframes(w.getnframes())
    return np.frombuffer(pcm, "<i2").astype(np.float32) / np.float32(32768.0)


def _place_across_edge(
    model: Any, samples: np.ndarray, clips: list[np.ndarray], edge: int
) -> tuple[int, float] | None:
    """Add to ``samples`` one of ``clips`` where the detector's run of windows spans
    segment edge ``edge``; returns (clip index, start_s) or None. Tried on an excerpt of
    the night itself that starts on the window grid: the detector has no recording
    context, so its windows score there exactly as in the whole night."""
    hop = 7680
    first = edge * SEGMENT_WINDOWS - 4  # the excerpt's first window
    start = first * hop
    stop = start + 8 * hop + 7920
    for index, clip in enumerate(clips):
        for step in range(34):
            at = start + int((4 * 0.48 - 1.7 + 0.06 * step) * 16000)
            local = samples[start:stop].copy()
            end = min(stop, at + len(clip))
            local[at - start : end - start] += clip[: end - at]
            found = events.detect(model.window_scores(local), model.manifest.event_threshold)
            if any(e.first_window <= 3 and e.last_window >= 4 for e in found):
                end = min(len(samples), at + len(clip))
                samples[at:end] += clip[: end - at]
                return index, at / 16000
    return None


def segment_events(model: Any, samples: np.ndarray, per: int) -> list[events.Event]:
    """What the fan-out computes: each segment's windows on its own samples, joined."""
    total = events.window_count(len(samples))
    parts = []
    for first in range(0, total, per):
        last = min(total, first + per) - 1
        start, stop = events.window_span(first, last)
        piece = samples[start:stop]
        scores = model.window_scores(piece)
        parts.append(
            events.detect(scores, model.manifest.event_threshold, samples=piece, first_window=first)
        )
    return events.join(parts)


@pytest.fixture(scope="session")
def long_case(tmp_path_factory: pytest.TempPathFactory) -> LongCase:
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    require((COUGH_DIR / "metadata.json").is_file(), f"no cough data at {COUGH_DIR}")
    from ml.model import load_model

    bundle = yamnet_cough_bundle(tmp_path_factory.mktemp("detector") / "bundle")
    model = load_model(bundle, yamnet_model=YAMNET_MODEL)
    meta = json.loads((COUGH_DIR / "metadata.json").read_text())
    clips = clear_coughs([COUGH_DIR / "raw" / m["filename"] for m in meta], model, 16)
    require(len(clips) >= 8, "too few cough clips the detector finds on their own")
    # Four coughs inside segments, on the window grid; and one across each of three
    # segment edges, placed where the detector's run of windows spans the edge.
    case = night(5 * EDGE_S + 7.3, clips[:4], [4.8, 14.4, 48.0, 2 * EDGE_S + 9.6])
    spare = clips[4:]
    for edge in (1, 3, 4):
        placed = _place_across_edge(model, case.samples, spare, edge)
        if placed is not None:
            index, start = placed
            case.coughs.append((start, start + len(spare.pop(index)) / 16000))
    data = case.wav()
    samples = _samples_of(data)
    joined = segment_events(model, samples, SEGMENT_WINDOWS)
    whole = events.detect(
        model.window_scores(samples), model.manifest.event_threshold, samples=samples
    )
    # The segment edges change nothing but the energy refinement within a joined event.
    assert [(e.first_window, e.last_window) for e in joined] == [
        (e.first_window, e.last_window) for e in whole
    ]
    edge = sum(
        1 for e in joined if e.first_window // SEGMENT_WINDOWS != e.last_window // SEGMENT_WINDOWS
    )
    require(edge >= 2, f"only {edge} placed cough(s) span a segment edge")
    return LongCase(bundle, data, [(e.start_s, e.end_s, e.score) for e in joined], edge)


def long_env(settings: Settings, case: LongCase, **extra: object) -> dict[str, object]:
    """The stack's settings for counting: the test detector, short segments."""
    return {
        "TUSSIS_COUGH_GATE_BUNDLE": str(case.detector),
        "TUSSIS_SEGMENT_S": str(SEGMENT_S),
        "TUSSIS_RECORDING_STORAGE_URL": settings.recording_storage_url,
        "TUSSIS_S3_ENDPOINT_URL": settings.s3_endpoint_url,
        **extra,
    }


DEFAULT_MODEL = PROJECT_ROOT / "models" / "default"
