"""Inception V3 bundles, fp32 against the reduced-precision path, in one run.

Loads two bundles trained by ``tussis train --backbone inception_v3 --inception-layer
mixed8 --precision fp32|int8-dynamic`` and prints, for the test split of the data both
were trained on (``split.json``, never used for fitting or the threshold):

* ROC AUC of each bundle, overall and per source, and the difference; also the fp32
  bundle's head on the int8 features (the change due to quantisation alone, with no
  second head fit);
* clips/s of backbone + head (spectrogram rendering included, as ``Model.predict``
  runs in a worker child), the two paths interleaved round by round on the same
  clips with the same threads, so a busy machine slows both alike; and their ratio;
* each path's pipeline efficiency: ``Model.predict`` clips/s over the bare network
  forward on pre-rendered spectrograms, in the same rounds.

Asserts nothing.

    python scripts/bench_inception.py --fp32 var/models/inception-mixed8-fp32 \\
        --int8 var/models/inception-mixed8-int8-dynamic
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARED = Path(os.environ.get("TUSSIS_SHARED_DIR", ROOT.parent / "shared"))
COUGHS = SHARED / "data" / "covid19-cough"
BATCH = 16  # the worker's chunk size


def test_split(bundles: Sequence[Path], data: Path, sample_rate: int) -> tuple[Any, list]:
    """The usable test-split recordings (examples, waveforms) shared by all bundles."""
    from ml.bundle import SPLIT_FILE
    from ml.datasets import load_dataset
    from ml.features import load_waveform
    from shared.audio import AudioError

    splits = [set(json.loads((b / SPLIT_FILE).read_text())["test"]) for b in bundles]
    if any(s != splits[0] for s in splits):
        print("  note: the bundles' test splits differ; using the recordings they share")
    hashes = set.intersection(*splits)
    examples, waves = [], []
    for ex in load_dataset(data):
        if ex.sha256 not in hashes:
            continue
        try:
            waves.append(load_waveform(ex.path, sample_rate))
        except AudioError:
            continue
        examples.append(ex)
    return examples, waves


def in_batches(fn: Callable[[Any], Any], items: Sequence[Any] | np.ndarray) -> np.ndarray:
    return np.concatenate([fn(items[i : i + BATCH]) for i in range(0, len(items), BATCH)])


def auc_lines(name: str, labels: np.ndarray, sources: np.ndarray, scores: np.ndarray) -> dict:
    from ml.evaluation import roc_auc

    row = {"overall": roc_auc(labels, scores)}
    for source in sorted(set(sources.tolist())):
        row[source] = roc_auc(labels[sources == source], scores[sources == source])
    print(f"  {name:<44} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
    return row


def clips_per_s(fn: Callable[[], object], clips: int) -> float:
    start = time.perf_counter()
    fn()
    return clips / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--fp32", type=Path, default=ROOT / "var/models/inception-mixed8-fp32")
    parser.add_argument(
        "--int8", type=Path, default=ROOT / "var/models/inception-mixed8-int8-dynamic"
    )
    parser.add_argument("--data", type=Path, default=COUGHS)
    parser.add_argument("--threads", type=int, default=1, help="backbone threads (each path)")
    parser.add_argument("--clips", type=int, default=64, help="test clips timed per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-auc", action="store_true", help="timings only")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from ml.backbones import spectrogram_batch
    from ml.model import load_model

    models = {
        "fp32": load_model(args.fp32, threads=args.threads),
        "int8": load_model(args.int8, threads=args.threads),
    }
    for key, model in models.items():
        b = model.manifest.backbone
        print(
            f"  {key}: {model.path.name}  layer {b.get('layer', 'mixed10')}  "
            f"precision {model.manifest.precision}  ({type(model.backbone).__name__})"
        )
    params = models["fp32"].manifest.spectrogram
    examples, waves = test_split([m.path for m in models.values()], args.data, params.sample_rate)
    labels = np.array([ex.label for ex in examples])
    sources = np.array([ex.source for ex in examples])
    print(f"  test split: {len(waves)} recordings, {int(labels.sum())} positive")

    if not args.skip_auc:
        features = {k: in_batches(m.backbone.embed, waves) for k, m in models.items()}
        aucs = {
            k: auc_lines(f"ROC AUC {k} bundle", labels, sources, m.head.scores(features[k]))
            for k, m in models.items()
        }
        cross = auc_lines(
            "ROC AUC fp32 head on int8 features",
            labels,
            sources,
            models["fp32"].head.scores(features["int8"]),
        )
        for group in aucs["fp32"]:
            base = aucs["fp32"][group]
            print(
                f"  {'AUC change, ' + group:<44} int8 bundle {aucs['int8'][group] - base:+.3f}"
                f"   fp32 head on int8 {cross[group] - base:+.3f}"
            )

    timed = waves[: args.clips]
    images = spectrogram_batch(timed, params)
    for model in models.values():  # graph tracing and interpreter warm-up, untimed
        model.predict(timed[:BATCH])
    rates: dict[str, list[float]] = {f"{k} {p}": [] for k in models for p in ("predict", "bare")}
    for round_ in range(args.rounds):
        # Alternate the order so neither path always runs right after the other.
        order = list(models.items()) if round_ % 2 == 0 else list(models.items())[::-1]
        for key, model in order:
            backbone: Any = model.backbone
            predict = partial(in_batches, model.predict, timed)
            rates[f"{key} predict"].append(clips_per_s(predict, len(timed)))
            bare = partial(in_batches, backbone.forward, images)
            rates[f"{key} bare"].append(clips_per_s(bare, len(timed)))
    median = {k: statistics.median(v) for k, v in rates.items()}
    print(f"  timing: {len(timed)} clips x {args.rounds} rounds, {args.threads} thread(s), medians")
    for key in models:
        print(
            f"  {'Inception mixed8 ' + key + ' backbone+head (predict)':<44} "
            f"{median[key + ' predict']:8.1f} clips/s   bare forward {median[key + ' bare']:8.1f}"
            f"   pipeline efficiency {median[key + ' predict'] / median[key + ' bare']:.2f}"
        )
    print(
        f"  {'int8 / fp32 speed-up (predict, same run)':<44} "
        f"{median['int8 predict'] / median['fp32 predict']:8.2f}x   "
        f"bare {median['int8 bare'] / median['fp32 bare']:.2f}x"
    )


if __name__ == "__main__":
    main()
