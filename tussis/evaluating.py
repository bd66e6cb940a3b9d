"""``tussis evaluate``: score a bundle on recordings it did not see in training."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from shared.bundle import fingerprint, read_manifest
from tussis.datasets import load_dataset
from tussis.evaluation import evaluate, write_outputs
from tussis.features import extract
from tussis.training import SPLIT_FILE

log = logging.getLogger(__name__)


def seen_in_training(model_dir: Path) -> set[str]:
    split_file = Path(model_dir) / SPLIT_FILE
    if not split_file.is_file():
        return set()
    split = json.loads(split_file.read_text())
    return set(split.get("train", [])) | set(split.get("validation", []))


def evaluate_bundle(
    model_dir: Path,
    data_dir: Path,
    *,
    out: Path | None,
    include_training_files: bool,
    seed: int,
    yamnet_model: Path | None,
    yamnet_url: str | None = None,
    inception_weights: str = "imagenet",
    cache_dir: Path | None,
    default_out_root: Path,
    progress: bool = True,
) -> dict[str, Any]:
    from worker.model import load_model

    manifest = read_manifest(model_dir)
    model = load_model(
        model_dir,
        inception_weights=inception_weights,
        yamnet_model=yamnet_model,
        yamnet_url=yamnet_url,
    )
    examples = load_dataset(data_dir)
    seen = set() if include_training_files else seen_in_training(model_dir)
    held_out = [ex for ex in examples if ex.sha256 not in seen]
    if not held_out:
        raise ValueError("every recording in the data was used to train this bundle")
    data = extract(
        held_out,
        model.backbone.embed,
        model.sample_rate,
        {"bundle": fingerprint(model_dir)},
        cache_dir,
        progress,
    )
    scores = model.head.scores(data.features)
    card_metrics = manifest.card.get("metrics", {})
    rates = card_metrics.get("source_only", {}).get("positive_rate_by_source")
    if card_metrics.get("source_only", {}).get("rates_from") != "training data":
        rates = None
    report = evaluate(data.labels, scores, data.sources, manifest.threshold, seed, rates)
    skipped = len(examples) - len(held_out)
    report["evaluated_on"] = (
        f"{len(data.examples)} recordings of {data_dir.name}"
        + (f" ({skipped} used in training were left out)" if skipped else "")
        + (f"; {len(data.rejected)} unusable" if data.rejected else "")
    )
    if not (Path(model_dir) / SPLIT_FILE).is_file() and not include_training_files:
        report["evaluated_on"] += (
            "; WARNING: the bundle records no training split, so these recordings may "
            "include its training data and the numbers may be optimistic"
        )
    report["model"] = {"name": manifest.name, "version": manifest.version}
    out = out or default_out_root / f"{manifest.name}-{manifest.version}"
    write_outputs(out, report, data.labels, scores, data.sources)
    report["outputs"] = str(out)
    return report
