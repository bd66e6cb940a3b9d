"""``tussis train``: deduplicated recordings -> (preprocessing ->) backbone
features (cached) -> a held-out test split -> repeated grouped cross-validation
on the rest, choosing the logistic head's regularisation on the mean
within-source AUC (``ml.selection``) -> the head refitted on all of the rest,
Platt-calibrated on its out-of-fold scores -> threshold on those scores -> the
bundle, with the test split's evaluation as its model card."""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ml.backbones import (
    PRETRAINED,
    Backbone,
    InceptionTFLiteBackbone,
    InceptionV3Backbone,
    YamnetBackbone,
    convert_int8_dynamic,
    is_truncated_weights_file,
)
from ml.bundle import FP32, INT8_DYNAMIC, PRECISIONS, SPLIT_FILE, Manifest, write_bundle
from ml.datasets import load_dataset
from ml.evaluation import (
    calibration_summary,
    confound_baselines,
    evaluate,
    loudness_of,
    source_prevalence,
    trimming_of,
    write_outputs,
)
from ml.features import extract
from ml.preprocess import Preprocessed, Preprocessing
from ml.selection import (
    C_GRID,
    FOLDS,
    REPEATS,
    best,
    cross_validate,
    cv_folds,
    fit_logistic,
    fold_platt,
    platt,
    split_test,
)
from ml.spectrogram import SpectrogramParams
from ml.splits import deduplicate
from shared.metrics import youden_threshold

log = logging.getLogger(__name__)

EVALUATION_DIR = "evaluation"
DISCLAIMER = (
    "Screening research tool, not a diagnostic device. Its output must not be used to "
    "diagnose, treat or exclude any disease."
)


@dataclass(frozen=True)
class TrainOptions:
    backbone: str = "yamnet"
    seed: int = 0
    test_fraction: float = 0.2
    # Pooled YAMNet features (ml.backbones.POOLED_PARTS joined by "+").
    features: str = "embedding_mean"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    folds: int = FOLDS
    repeats: int = REPEATS
    c_grid: tuple[float, ...] = C_GRID
    # "platt": calibrated on out-of-fold scores and folded into the head; "none".
    calibration: str = "platt"
    inception_weights: str = "imagenet"
    # None: the whole network; "mixed8": cut there (ml.backbones.INCEPTION_LAYERS).
    inception_layer: str | None = None
    # How the Inception backbone runs in the bundle, and so also during feature
    # extraction: the head is fitted on the features serving will compute.
    precision: str = FP32
    yamnet_model: Path | None = None
    yamnet_url: str | None = None
    cache_dir: Path | None = None
    progress: bool = True


def make_backbone(
    options: TrainOptions, params: SpectrogramParams, features: str = "embedding_mean"
) -> tuple[Backbone, dict[str, Any]]:
    """The backbone and its manifest entry (which also keys the feature cache)."""
    if options.backbone == "inception_v3":
        if features != "embedding_mean":
            raise ValueError("--features applies to yamnet only: Inception pools by the mean")
        if options.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {options.precision!r}: use one of {PRECISIONS}")
        layer = options.inception_layer
        inception = InceptionV3Backbone.build_for_training(
            params, weights=options.inception_weights, seed=options.seed, layer=layer
        )
        source = "imagenet" if inception.weights_source is not None else "bundle"
        spec: dict[str, Any] = {"name": "inception_v3", "weights": source}
        provenance: dict[str, Any] = {}
        if layer is not None or options.precision != FP32:
            # The bundle carries its backbone (the cut network's weights or the
            # converted file): TUSSIS_INCEPTION_WEIGHTS names the *whole* network's
            # weights at serving time, so it cannot also name a cut one.
            spec = {"name": "inception_v3", "weights": "bundle", "precision": options.precision}
            if layer is not None:
                spec["layer"] = layer
            provenance = {"pretrained": weights_provenance(inception.weights_source)}
            if options.precision == FP32 and is_truncated_weights_file(inception.weights_source):
                # The cut network is the file's weights, frozen: reference that file
                # by path and sha256 (train_bundle writes the path) instead of
                # writing a 43 MB copy into the bundle.
                spec["weights"] = PRETRAINED
        cache_spec = {
            **spec,
            **provenance,
            "spectrogram": params.to_dict(),
            "seed": options.seed,
        }
        if not options.preprocessing.is_identity:
            cache_spec["preprocess"] = options.preprocessing.to_dict()
        backbone: Backbone = inception
        if options.precision == INT8_DYNAMIC:
            backbone = InceptionTFLiteBackbone(params, convert_int8_dynamic(inception))
        return backbone, {"manifest": {**spec, **provenance}, "cache": cache_spec}
    if options.backbone == "yamnet":
        if options.precision != FP32 or options.inception_layer is not None:
            # YAMNet is already a TFLite model: there is nothing here to cut or convert.
            raise ValueError("--precision and --inception-layer apply to inception_v3 only")
        if options.yamnet_model is None:
            raise ValueError("the yamnet backbone needs --yamnet-model (or TUSSIS_YAMNET_MODEL)")
        yamnet = YamnetBackbone(options.yamnet_model, features=features, url=options.yamnet_url)
        spec = {"name": "yamnet", "features": features}
        cache_spec = yamnet_spec(options.yamnet_model, features, options.preprocessing)
        return yamnet, {"manifest": spec, "cache": cache_spec}
    raise ValueError(f"unknown backbone {options.backbone!r}: use inception_v3 or yamnet")


def yamnet_spec(model_path: Path, features: str, preprocessing: Preprocessing) -> dict[str, Any]:
    """What keys YAMNet features in the cache: the network file, the pooling and
    the preprocessing (absent when there is none, so older caches stay valid)."""
    from ml.yamnet import sha256_of

    spec: dict[str, Any] = {"name": "yamnet", "features": features}
    spec.update(model_sha256=sha256_of(model_path), rate=16000)
    if not preprocessing.is_identity:
        spec["preprocess"] = preprocessing.to_dict()
    return spec


def weights_provenance(weights: str | None) -> dict[str, Any]:
    """Where a bundle's pretrained backbone weights came from: a local file by name and
    content hash (which also keys the feature cache), else the Keras source or none."""
    if weights is None or weights in ("imagenet", "none"):
        return {"source": weights or "none"}
    from ml.yamnet import sha256_of

    return {"source": Path(weights).name, "sha256": sha256_of(Path(weights))}


def caveat_for(within_source_auc: float, baseline: str, baseline_auc: float) -> str:
    """The sentence a person reads next to every score of this bundle: its
    cross-validated within-source AUC, and whether it beats the strongest
    baseline of how the recordings were made (``baseline``: loudness_only or
    trimming_only)."""
    what = {"loudness_only": "loudness", "trimming_only": "how the clip was cut"}[baseline]
    verdict = "near chance" if within_source_auc < 0.6 else "weak"
    if within_source_auc >= 0.7:
        verdict = "moderate"
    tail = (
        f"no better than {what} alone ({baseline_auc:.2f})"
        if within_source_auc <= baseline_auc + 0.02
        else f"above {what} alone ({baseline_auc:.2f})"
    )
    return (
        "Research screening tool, not a diagnostic device: within one recording source "
        f"its cross-validated AUC is {within_source_auc:.2f} ({verdict}), {tail}."
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def train_bundle(
    data_dir: Path,
    out: Path,
    name: str,
    version: str,
    options: TrainOptions,
    params: SpectrogramParams | None = None,
    labels: tuple[str, str] = ("not sick", "sick"),
    features: str | None = None,
) -> dict[str, Any]:
    params = params or SpectrogramParams()
    features = features or options.features
    if options.calibration not in ("platt", "none"):
        raise ValueError(f"unknown calibration {options.calibration!r}: use platt or none")
    data_dir, out = Path(data_dir), Path(out)
    examples = load_dataset(data_dir)
    kept, hygiene = deduplicate(examples)
    backbone, spec = make_backbone(options, params, features)
    embedder = Preprocessed(backbone, options.preprocessing, params.sample_rate)
    data = extract(
        kept, embedder.embed, params.sample_rate, spec["cache"], options.cache_dir, options.progress
    )
    rest_examples, test_examples = split_test(data.examples, options.test_fraction, options.seed)
    rest = data.subset({ex.sha256 for ex in rest_examples})
    test = data.subset({ex.sha256 for ex in test_examples})
    folds = cv_folds(
        rest.labels,
        rest.sources,
        [ex.sha256 for ex in rest.examples],
        options.folds,
        options.repeats,
        options.seed,
    )
    results = cross_validate(rest.features, rest.labels, rest.sources, folds, options.c_grid)
    chosen = best(results)
    head = fit_logistic(rest.features, rest.labels, chosen.c)
    assert chosen.oof_logits is not None
    oof = chosen.oof_logits
    calibration: dict[str, Any] = {"method": options.calibration}
    if options.calibration == "platt":
        a, b = platt(oof, rest.labels)
        head = fold_platt(head, a, b)
        oof = a * oof + b
        calibration.update(a=a, b=b, fitted_on="out-of-fold logits of every repeat")
    # Each recording's out-of-fold score, averaged over repeats: what the threshold
    # and the cross-validated calibration figures are computed on.
    oof_scores = _sigmoid(oof).mean(axis=0)
    threshold = youden_threshold(rest.labels, oof_scores)
    calibration["out_of_fold"] = calibration_summary(rest.labels, oof_scores, rest.sources)

    rates = source_prevalence(rest.labels, rest.sources)
    test_scores = head.scores(test.features)
    report = evaluate(
        test.labels, test_scores, test.sources, threshold, options.seed, rates, test.features
    )
    report.update(
        confound_baselines(
            test.examples, test.labels, test.sources, options.cache_dir, options.seed
        )
    )
    report["evaluated_on"] = (
        "held-out test split (never used for fitting, selection or the threshold)"
    )
    cv = chosen.summary()
    cv["C_grid"] = {str(r.c): r.mean_within for r in results}
    within = cv["mean_within_source_auc"]
    # The confounds, on the same folds: how loud the recording is, and how it was
    # cut. A model no better than these within a source has not shown cough signal.
    cv["baselines"] = {
        name: best(cross_validate(x, rest.labels, rest.sources, folds, options.c_grid)).summary()
        for name, x in (
            ("loudness_only", loudness_of(rest.examples, options.cache_dir)),
            ("trimming_only", trimming_of(rest.examples, options.cache_dir)),
        )
    }
    confound = max(cv["baselines"].items(), key=lambda kv: kv[1]["mean_within_source_auc"])

    out.mkdir(parents=True, exist_ok=True)
    manifest_backbone = dict(spec["manifest"])
    if (
        isinstance(backbone, InceptionV3Backbone | InceptionTFLiteBackbone)
        and manifest_backbone["weights"] == "bundle"
    ):
        manifest_backbone["file"] = backbone.save_weights(out)
    if manifest_backbone.get("weights") == PRETRAINED:
        # Relative to the bundle, so the bundle and ../shared move together (the
        # repository's models/inception finds ../shared/models from any clone).
        source = Path(options.inception_weights).resolve()
        manifest_backbone["pretrained"] = {
            **manifest_backbone["pretrained"],
            "path": os.path.relpath(source, out.resolve()),
        }
    card = {
        "intended_use": DISCLAIMER,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {
            "folder": data_dir.name,
            "recordings": len(examples),
            **hygiene,
            "usable": len(data.examples),
            "rejected": {ex.path.name: code for ex, code in data.rejected},
            "positive_rate_by_source": source_prevalence(data.labels, data.sources),
        },
        "split": {
            "method": "test split stratified by label and source, by content hash; "
            "repeated grouped cross-validation on the rest",
            "seed": options.seed,
            "sizes": {"cross-validation": len(rest.examples), "test": len(test.examples)},
        },
        "selection": {
            "metric": "mean within-source AUC across folds",
            "folds": len(folds),
            "repeats": options.repeats,
            **cv,
        },
        "training": {
            "head": "logistic regression (scikit-learn, balanced class weights)",
            "C": chosen.c,
            "features": features,
            "preprocess": options.preprocessing.to_dict(),
        },
        "calibration": calibration,
        "threshold_rule": "maximises sensitivity + specificity on the out-of-fold scores",
        "metrics": report,
        "environment": {"python": platform.python_version()},
    }
    manifest = Manifest(
        name=name,
        version=version,
        backbone=manifest_backbone,
        spectrogram=params,
        labels=labels,
        threshold=threshold,
        card=card,
        preprocess=options.preprocessing,
        caveat=caveat_for(within, confound[0], confound[1]["mean_within_source_auc"]),
        within_source_auc=within,
    )
    write_bundle(out, manifest, head)
    conflicting = sorted({ex.sha256 for ex in examples} - {ex.sha256 for ex in kept})
    (out / SPLIT_FILE).write_text(
        json.dumps(
            {
                "train": sorted({ex.sha256 for ex in rest.examples}),
                "test": sorted({ex.sha256 for ex in test.examples}),
                "conflicting_labels": conflicting,
            }
        )
        + "\n"
    )
    write_outputs(out / EVALUATION_DIR, report, test.labels, test_scores, test.sources)
    return report
