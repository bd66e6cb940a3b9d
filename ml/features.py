"""Backbone features for a data set, cached on disk.

The cache key is the file's content hash plus a key for everything that
changes the features (backbone, its weights, renderer parameters), so a second
run over the same data is fast and a changed renderer never reuses stale
features.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ml.datasets import Example
from shared.audio import AudioError, check_usable, decode
from shared.config import load_settings

log = logging.getLogger(__name__)


def feature_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FeatureSet:
    examples: list[Example]
    features: np.ndarray
    rejected: list[tuple[Example, str]]

    @property
    def labels(self) -> np.ndarray:
        return np.array([ex.label for ex in self.examples], dtype=np.int64)

    @property
    def sources(self) -> np.ndarray:
        return np.array([ex.source for ex in self.examples])

    def subset(self, hashes: set[str]) -> FeatureSet:
        keep = [i for i, ex in enumerate(self.examples) if ex.sha256 in hashes]
        return FeatureSet([self.examples[i] for i in keep], self.features[keep], [])


def load_waveform(path: Path, sample_rate: int) -> np.ndarray:
    """Decode and check a file exactly as the worker does, with the same settings."""
    s = load_settings()
    audio = decode(path.read_bytes(), sample_rate, max_seconds=s.max_duration_s + 1)
    check_usable(audio, s.min_duration_s, s.max_duration_s, s.silence_dbfs)
    return audio.samples


def extract(
    examples: Sequence[Example],
    embed: Any,
    sample_rate: int,
    spec: dict[str, Any],
    cache_dir: Path | None,
    progress: bool = True,
    batch_size: int = 16,
) -> FeatureSet:
    """``embed(list_of_waveforms) -> (n, d)`` for every usable example; unusable ones are
    reported (code) rather than silently dropped."""
    folder = Path(cache_dir) / feature_key(spec) if cache_dir else None
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spec.json").write_text(json.dumps(spec, indent=2, sort_keys=True))
    kept: list[Example] = []
    rows: list[np.ndarray | None] = []
    rejected: list[tuple[Example, str]] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        feats = np.asarray(embed([w for _, w in pending]), dtype=np.float32)
        for (index, _), row in zip(pending, feats, strict=True):
            rows[index] = row
            if folder:
                np.save(folder / f"{kept[index].sha256}.npy", row)
        pending.clear()

    bar = tqdm(examples, desc="features", unit="file", disable=not progress, leave=False)
    for ex in bar:
        cached = folder / f"{ex.sha256}.npy" if folder else None
        if cached is not None and cached.is_file():
            kept.append(ex)
            rows.append(np.load(cached))
            continue
        try:
            waveform = load_waveform(ex.path, sample_rate)
        except AudioError as exc:
            rejected.append((ex, exc.code))
            continue
        kept.append(ex)
        rows.append(None)
        pending.append((len(kept) - 1, waveform))
        if len(pending) >= batch_size:
            flush()
    flush()
    for ex, code in rejected:
        log.warning("skipped %s: %s", ex.path.name, code)
    features = np.stack([r for r in rows if r is not None]) if rows else np.zeros((0, 0))
    return FeatureSet(kept, features.astype(np.float32), rejected)
