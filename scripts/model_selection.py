"""Model selection for the default bundle: every option of issue 12, side by side,
by repeated grouped cross-validation on the recordings outside the test split.

    .venv/bin/python scripts/model_selection.py extract   # features, cached (slow once)
    .venv/bin/python scripts/model_selection.py cv        # the table (minutes)

``make model-selection`` runs both. The test split (``ml.selection.split_test``,
the same one ``tussis train`` holds out) is never read here, so nothing chosen
from this table has seen it. Writes var/selection/cv.json and prints the table
that docs/model-card.md quotes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ml.acoustic import NAMES, TRIMMING  # noqa: E402
from ml.backbones import ALL_POOLED, YamnetBackbone, pooled_columns  # noqa: E402
from ml.datasets import load_dataset  # noqa: E402
from ml.features import FeatureSet, extract  # noqa: E402
from ml.preprocess import Preprocessed, Preprocessing  # noqa: E402
from ml.splits import deduplicate  # noqa: E402

SHARED = Path(os.environ.get("TUSSIS_SHARED_DIR", ROOT.parent / "shared"))
DATA = SHARED / "data" / "covid19-cough"
YAMNET = SHARED / "models" / "yamnet.tflite"
INCEPTION = SHARED / "models" / "inception_v3_imagenet_to_mixed8.weights.h5"
CACHE = ROOT / "var" / "feature-cache"
OUT = ROOT / "var" / "selection"
VARIANTS = {
    "raw": Preprocessing(),
    "tel": Preprocessing(telephone_band=True),
    "rms": Preprocessing(level="rms"),
    "tel+rms": Preprocessing(telephone_band=True, level="rms"),
}


def examples() -> list:
    kept, _ = deduplicate(load_dataset(DATA))
    return kept


def yamnet_features(variant: str, progress: bool = True) -> FeatureSet:
    from ml.training import yamnet_spec

    prep = VARIANTS[variant]
    backbone = Preprocessed(YamnetBackbone(YAMNET, features=ALL_POOLED), prep, 16000)
    spec = yamnet_spec(YAMNET, ALL_POOLED, prep)
    return extract(examples(), backbone.embed, 16000, spec, CACHE, progress)


def loudness_features() -> FeatureSet:
    from ml.acoustic import loudness

    spec = {"name": "loudness", "rate": 16000}
    return extract(examples(), lambda ws: [loudness(w) for w in ws], 16000, spec, CACHE, False)


INCEPTION_POOLINGS = ("mean", "mean+max+std")


def inception_features(variant: str, progress: bool = True) -> FeatureSet:
    """mixed8's 1,280 channels pooled over the image by mean, max and sd (3,840
    columns; the bundle's backbone pools by the mean alone: the first 1,280)."""
    from ml.backbones import InceptionV3Backbone, spectrogram_batch
    from ml.spectrogram import SpectrogramParams

    params = SpectrogramParams()
    net = InceptionV3Backbone(params, weights=str(INCEPTION), layer="mixed8")

    def embed(waveforms: list[np.ndarray]) -> np.ndarray:
        maps = np.asarray(net.trunk(spectrogram_batch(waveforms, params), training=False))
        return np.concatenate(
            [maps.mean(axis=(1, 2)), maps.max(axis=(1, 2)), maps.std(axis=(1, 2))], axis=1
        )

    prep = VARIANTS[variant]
    spec = {
        "name": "inception_v3",
        "layer": "mixed8",
        "pooling": "mean+max+std",
        "weights_sha256": "d110479ff59b50f981203eb7e6c5e2a842a9c9435ee547462f086f7b91b98409",
        "spectrogram": params.to_dict(),
        "preprocess": prep.to_dict(),
    }
    wrapped = Preprocessed(
        type("B", (), {"name": "inception_v3", "embed": staticmethod(embed)})(), prep, 16000
    )
    return extract(examples(), wrapped.embed, 16000, spec, CACHE, progress, batch_size=8)


def yamnet_options() -> list[tuple[str, str, str, bool]]:
    """(row name, preprocessing variant, YAMNet features, per-source standardisation)."""
    rows = []
    for v in VARIANTS:
        rows.append((f"yamnet {v} embedding_mean", v, "embedding_mean", False))
        rows.append((f"yamnet {v} mean+max+std", v, MEAN_MAX_STD, False))
    rows += [
        ("yamnet raw mean+scores+acoustic", "raw", SCORES_ACOUSTIC, False),
        ("yamnet tel+rms mean+scores+acoustic", "tel+rms", SCORES_ACOUSTIC, False),
        ("yamnet raw all pooled", "raw", ALL_POOLED, False),
        ("yamnet raw acoustic only", "raw", "acoustic", False),
        (
            "trimming only (duration, active share, crest, envelope sd)",
            "raw",
            "acoustic:" + ",".join(TRIMMING),
            False,
        ),
        (
            "acoustic without trimming (spectral, cough windows)",
            "raw",
            "acoustic:" + ",".join(SPECTRAL),
            False,
        ),
        (
            "yamnet raw mean+max+std + spectral acoustic",
            "raw",
            MEAN_MAX_STD + "+acoustic:" + ",".join(SPECTRAL),
            False,
        ),
        ("yamnet tel+rms acoustic only", "tel+rms", "acoustic", False),
        ("yamnet raw embedding_mean, per-source std.", "raw", "embedding_mean", True),
        ("yamnet tel+rms mean+max+std, per-source std.", "tel+rms", MEAN_MAX_STD, True),
    ]
    return rows


MEAN_MAX_STD = "embedding_mean+embedding_max+embedding_std"
SCORES_ACOUSTIC = "embedding_mean+scores_mean+scores_max+acoustic"


# How the clip was cut (its length, how much of it is silence, how peaky its
# envelope is), not what the cough sounds like: a confound like loudness.
SPECTRAL = tuple(n for n in NAMES if n not in TRIMMING)


def columns(x: np.ndarray, features: str) -> np.ndarray:
    """The columns of the all-pooled vector that ``features`` names, in its order;
    ``acoustic:NAME,NAME`` picks some of ml.acoustic's features."""
    where = pooled_columns(ALL_POOLED)
    parts = []
    for p in features.split("+"):
        if p.startswith("acoustic:"):
            names = p.split(":", 1)[1].split(",")
            start = where["acoustic"].start
            parts.append(x[:, [start + NAMES.index(n) for n in names]])
        else:
            parts.append(x[:, where[p]])
    return np.hstack(parts)


def fmt(m: float, sd: float) -> str:
    return f"{m:.3f} ± {sd:.3f}"


def run_cv(
    variants: list[str],
    repeats: int,
    inception: bool,
    yamnet: bool,
    out: str,
    only: str | None = None,
) -> None:
    from ml import selection
    from ml.selection import cv_folds

    loud = loudness_features()
    ex = loud.examples
    order = {e.sha256: i for i, e in enumerate(ex)}
    labels, sources = loud.labels, loud.sources
    rest, _test = selection.split_test(ex, selection.TEST_FRACTION, selection.SEED)
    idx = np.array(sorted(order[e.sha256] for e in rest))
    y, src = labels[idx], sources[idx]
    folds = cv_folds(y, src, [ex[i].sha256 for i in idx], repeats=repeats, seed=selection.SEED)
    print(
        f"{len(ex)} distinct recordings, {len(idx)} outside the test split; "
        f"{len(folds)} folds ({repeats} repeats)",
        flush=True,
    )
    rows: list[dict] = []

    def run(name: str, x: np.ndarray, per_source: bool = False) -> None:
        t = time.time()
        results = selection.cross_validate(x[idx], y, src, folds, per_source=per_source)
        chosen = selection.best(results)
        row = {
            "option": name,
            "dims": int(x.shape[1]),
            **chosen.summary(),
            "by_C": {str(r.c): r.mean_within for r in results},
        }
        rows.append(row)
        bs = row["by_source"]
        print(
            f"| {name} | {row['dims']} | {row['C']:g} | "
            f"{fmt(row['mean_within_source_auc'], row['sd_within_source_auc'])} | "
            + " | ".join(fmt(bs[s]["mean"], bs[s]["sd"]) for s in sorted(bs))
            + f" | {fmt(row['overall']['mean'], row['overall']['sd'])} | ({time.time() - t:.0f} s)",
            flush=True,
        )

    print(
        "| option | dims | C | mean within-source AUC | "
        + " | ".join(sorted(set(src.tolist())))
        + " | overall |",
        flush=True,
    )
    run("loudness only (RMS + peak dBFS)", loud.features)
    cache: dict[str, np.ndarray] = {}
    for name, v, features, per_source in yamnet_options():
        if v not in variants or not yamnet or (only and only not in name):
            continue
        if v not in cache:
            fs = yamnet_features(v, progress=False)
            assert [e.sha256 for e in fs.examples] == [e.sha256 for e in ex]
            cache[v] = fs.features
        run(name, columns(cache[v], features), per_source)
    if inception:
        for v in ("raw", "tel"):
            fs = inception_features(v, progress=False)
            assert [e.sha256 for e in fs.examples] == [e.sha256 for e in ex]
            run(f"inception mixed8 {v} mean", fs.features[:, :1280])
            run(f"inception mixed8 {v} mean+max+std", fs.features)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / out).write_text(
        json.dumps(
            {"folds": len(folds), "repeats": repeats, "recordings": len(idx), "rows": rows},
            indent=2,
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("phase", choices=["extract", "extract-inception", "cv"])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-inception", action="store_true")
    parser.add_argument("--no-yamnet", action="store_true")
    parser.add_argument("--out", default="cv.json", help="file name under var/selection")
    parser.add_argument("--only", default=None, help="run only rows whose name contains this")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    variants = args.variants.split(",")
    if args.phase == "extract":
        loudness_features()
        for v in variants:
            t = time.time()
            fs = yamnet_features(v)
            print(f"yamnet {v}: {fs.features.shape} in {time.time() - t:.0f} s", flush=True)
        return
    if args.phase == "extract-inception":
        for v in variants:
            t = time.time()
            fs = inception_features(v)
            print(f"inception {v}: {fs.features.shape} in {time.time() - t:.0f} s", flush=True)
        return
    run_cv(variants, args.repeats, not args.no_inception, not args.no_yamnet, args.out, args.only)


if __name__ == "__main__":
    main()
