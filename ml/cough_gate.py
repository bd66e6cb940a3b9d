"""``tussis train-cough-gate``: a YAMNet-based detector that says whether a
recording contains a cough at all, before any diagnosis is attempted.

One YAMNet class score cannot do it (many 8 kHz phone coughs score low on
``Cough``), so the gate is a logistic head on the mean YAMNet
embedding plus every class's maximum score, trained on the real coughs of the
data set against speech, music, noise, hum, tones and room tone. Its threshold
keeps at least 97 % of validation coughs, leaving margin under the 5 % budget
of rejected real coughs.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ml.bundle import SPLIT_FILE, Manifest, write_bundle
from ml.datasets import Example, file_sha256, load_dataset
from ml.features import FeatureSet, extract
from ml.spectrogram import SpectrogramParams
from ml.splits import stratified_split
from ml.training import DISCLAIMER, TrainOptions, make_backbone, train_head

FEATURES = "embedding_mean+scores_max"
KEEP_VALIDATION_COUGHS = 0.97
GATE_L2, GATE_LEARNING_RATE = 1e-3, 3e-3
LABELS = ("no cough", "cough")


def _negatives(folder: Path) -> list[Example]:
    return [
        Example(p, 0, "negative:" + p.stem.split("-")[0], file_sha256(p))
        for p in sorted(Path(folder).rglob("*.wav"))
    ]


def _logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return float(np.log(p / (1 - p)))


def choose_gate_threshold(cough_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """Keep ``KEEP_VALIDATION_COUGHS`` of coughs; if negatives all score lower still,
    move halfway (in logit space) towards them for margin on both sides."""
    keep = float(np.quantile(cough_scores, 1 - KEEP_VALIDATION_COUGHS))
    top_negative = float(np.max(negative_scores)) if len(negative_scores) else 0.0
    if top_negative >= keep:
        return keep
    mid = (_logit(keep) + _logit(top_negative)) / 2
    return float(1 / (1 + np.exp(-mid)))


def _rates(data: FeatureSet, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    detected = scores >= threshold
    out: dict[str, Any] = {}
    for source in sorted(set(data.sources.tolist())):
        mask = data.sources == source
        out[source] = {"n": int(mask.sum()), "detected": float(detected[mask].mean())}
    return out


def train_cough_gate(
    coughs_dir: Path,
    negatives_dir: Path,
    out: Path,
    options: TrainOptions,
    name: str = "cough-gate",
    version: str | None = None,
) -> dict[str, Any]:
    # The gate separates kinds of sound, not a subtle label: it wants far less
    # regularisation than the diagnosis head (with L2 1.0 it let synthetic speech through).
    options = replace(options, backbone="yamnet", l2=GATE_L2, learning_rate=GATE_LEARNING_RATE)
    coughs = [replace(ex, label=1) for ex in load_dataset(coughs_dir)]
    examples = coughs + _negatives(negatives_dir)
    backbone, spec = make_backbone(options, SpectrogramParams(), FEATURES)
    data = extract(
        examples, backbone.embed, 16000, spec["cache"], options.cache_dir, options.progress
    )
    splits = stratified_split(
        data.examples, options.test_fraction, options.validation_fraction, options.seed
    )
    parts = {k: data.subset({ex.sha256 for ex in v}) for k, v in splits.items()}
    head, fit_info = train_head(parts["train"], parts["validation"], options)
    val = parts["validation"]
    val_scores = head.scores(val.features)
    threshold = choose_gate_threshold(val_scores[val.labels == 1], val_scores[val.labels == 0])

    test = parts["test"]
    all_scores = head.scores(data.features)
    report = {
        "threshold": threshold,
        "test_split": _rates(test, head.scores(test.features), threshold),
        "all_coughs_in_data": _rates(
            data.subset({ex.sha256 for ex in data.examples if ex.label == 1}),
            all_scores[data.labels == 1],
            threshold,
        ),
        "rejected_as_unusable": {ex.path.name: code for ex, code in data.rejected},
    }
    cough_rate = float((all_scores[data.labels == 1] >= threshold).mean())
    report["all_coughs_detected"] = cough_rate
    manifest = Manifest(
        name=name,
        version=version or datetime.now(UTC).strftime("%Y.%m.%d"),
        backbone=spec["manifest"],
        spectrogram=SpectrogramParams(),
        labels=LABELS,
        threshold=threshold,
        card={
            "intended_use": "Decides whether a recording contains a cough before diagnosis. "
            + DISCLAIMER,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "positives": f"every usable recording of {Path(coughs_dir).name}",
            "negatives": "synthetic: espeak-ng speech (clean and in noise), music, coloured "
            "noise, mains hum, tones and sweeps, near-silent room tone (tussis make-negatives)",
            "split": {k: len(v.examples) for k, v in parts.items()},
            "threshold_rule": f"keeps {KEEP_VALIDATION_COUGHS:.0%} of validation coughs",
            "training": fit_info,
            "metrics": report,
        },
    )
    out = Path(out)
    write_bundle(out, manifest, head)
    (out / SPLIT_FILE).write_text(
        json.dumps({k: sorted({ex.sha256 for ex in v.examples}) for k, v in parts.items()}) + "\n"
    )
    return report
