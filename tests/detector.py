"""A cough detector bundle for tests and benchmarks: YAMNet's own AudioSet "Cough"
score per window, thresholded (the reference issue 22 states: 92.5 % of episodes at
18.8 false positives per hour on the held-back set). It has no recording context, so
a window's score depends on its own 0.975 s alone; written as an ordinary bundle
(manifest + head) that ``ml.model.load_model`` loads like any other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shared.config import PROJECT_ROOT

COUGH_LOGIT = 1024 + 42  # the "Cough" class among window_embedding+logit_scores
THRESHOLD = 0.3


def yamnet_cough_bundle(out: Path) -> Path:
    manifest = json.loads((PROJECT_ROOT / "models" / "cough-gate" / "manifest.json").read_text())
    manifest.update(
        name="yamnet-cough-class",
        version="test.1",
        threshold=THRESHOLD,
        backbone={"name": "yamnet", "features": "window_embedding+logit_scores", "pooling": "max"},
    )
    manifest.pop("counting_threshold", None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    width = 1024 + 521
    weights = np.zeros(width, np.float32)
    weights[COUGH_LOGIT] = 1.0  # sigmoid(logit) is YAMNet's own Cough score
    np.savez(
        out / manifest["head"],
        mean=np.zeros(width, np.float32),
        scale=np.ones(width, np.float32),
        weights=weights,
        bias=np.float32(0.0),
    )
    return out
