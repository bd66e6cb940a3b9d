"""``tussis train``: backbone features (cached) -> logistic head (Keras, class
weights, early stopping on validation, TensorBoard) -> threshold chosen on
validation -> bundle with its held-out evaluation as the model card."""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ml.backbones import (
    Backbone,
    InceptionTFLiteBackbone,
    InceptionV3Backbone,
    YamnetBackbone,
    convert_int8_dynamic,
)
from ml.bundle import FP32, INT8_DYNAMIC, PRECISIONS, SPLIT_FILE, Head, Manifest, write_bundle
from ml.datasets import load_dataset
from ml.evaluation import choose_threshold, evaluate, source_prevalence, write_outputs
from ml.features import FeatureSet, extract
from ml.spectrogram import SpectrogramParams
from ml.splits import stratified_split

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
    validation_fraction: float = 0.2
    max_epochs: int = 300
    patience: int = 30
    # Chosen on the validation split of covid19-cough (lowest validation loss among
    # l2 in {1e-3, 1e-2, 1e-1, 1} x learning rate in {3e-3, 3e-4}); never on test data.
    l2: float = 1.0
    learning_rate: float = 3e-4
    inception_weights: str = "imagenet"
    # None: the whole network; "mixed8": cut there (ml.backbones.INCEPTION_LAYERS).
    inception_layer: str | None = None
    # How the Inception backbone runs in the bundle, and so also during feature
    # extraction: the head is fitted on the features serving will compute.
    precision: str = FP32
    yamnet_model: Path | None = None
    yamnet_url: str | None = None
    cache_dir: Path | None = None
    logdir: Path | None = None
    progress: bool = True


def make_backbone(
    options: TrainOptions, params: SpectrogramParams, features: str = "embedding_mean"
) -> tuple[Backbone, dict[str, Any]]:
    """The backbone and its manifest entry (which also keys the feature cache)."""
    if options.backbone == "inception_v3":
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
        cache_spec = {
            **spec,
            **provenance,
            "spectrogram": params.to_dict(),
            "seed": options.seed,
        }
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
        from ml.yamnet import sha256_of

        yamnet = YamnetBackbone(options.yamnet_model, features=features, url=options.yamnet_url)
        spec = {"name": "yamnet", "features": features}
        cache_spec = {**spec, "model_sha256": sha256_of(options.yamnet_model), "rate": 16000}
        return yamnet, {"manifest": spec, "cache": cache_spec}
    raise ValueError(f"unknown backbone {options.backbone!r}: use inception_v3 or yamnet")


def weights_provenance(weights: str | None) -> dict[str, Any]:
    """Where a bundle's pretrained backbone weights came from: a local file by name and
    content hash (which also keys the feature cache), else the Keras source or none."""
    if weights is None or weights in ("imagenet", "none"):
        return {"source": weights or "none"}
    from ml.yamnet import sha256_of

    return {"source": Path(weights).name, "sha256": sha256_of(Path(weights))}


def data_quality(examples: list) -> dict[str, int]:
    """Identical files, and identical files carrying both labels: a card must say so."""
    labels_by_hash: dict[str, set[int]] = {}
    for ex in examples:
        labels_by_hash.setdefault(ex.sha256, set()).add(ex.label)
    return {
        "distinct_recordings": len(labels_by_hash),
        "recordings_with_both_labels": sum(len(v) > 1 for v in labels_by_hash.values()),
    }


class _EpochBar:
    """A tqdm bar over epochs, as a Keras callback."""

    def __init__(self, total: int, enabled: bool) -> None:
        import keras

        bar = tqdm(total=total, desc="epochs", unit="epoch", disable=not enabled, leave=False)

        class Callback(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                logs = logs or {}
                bar.set_postfix(
                    loss=f"{logs.get('loss', 0):.3f}", val=f"{logs.get('val_loss', 0):.3f}"
                )
                bar.update(1)

            def on_train_end(self, logs: dict | None = None) -> None:
                bar.close()

        self.callback = Callback()


def train_head(
    train: FeatureSet, validation: FeatureSet, options: TrainOptions
) -> tuple[Head, dict[str, Any]]:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(options.seed)
    tf.config.experimental.enable_op_determinism()
    x, y = train.features.astype(np.float64), train.labels
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    standardise = lambda f: ((f - mean) / scale).astype(np.float32)  # noqa: E731
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the training split needs recordings of both labels")
    # Balanced class weights: each label contributes half the loss.
    class_weight = {0: len(y) / (2.0 * n_neg), 1: len(y) / (2.0 * n_pos)}

    model = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(
                1, activation="sigmoid", kernel_regularizer=keras.regularizers.l2(options.l2)
            ),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(options.learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    callbacks: list[Any] = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=options.patience, restore_best_weights=True
        ),
        _EpochBar(options.max_epochs, options.progress).callback,
    ]
    if options.logdir:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(options.logdir)))
    history = model.fit(
        standardise(x),
        y.astype(np.float32),
        validation_data=(standardise(validation.features), validation.labels.astype(np.float32)),
        epochs=options.max_epochs,
        batch_size=32,
        class_weight=class_weight,
        callbacks=callbacks,
        shuffle=True,
        verbose=0,
    )
    kernel, bias = model.layers[-1].get_weights()
    head = Head(
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        weights=kernel.reshape(-1).astype(np.float32),
        bias=float(bias[0]),
    )
    val_losses = history.history["val_loss"]
    return head, {
        "epochs_run": len(val_losses),
        "best_epoch": int(np.argmin(val_losses)) + 1,
        "best_val_loss": float(np.min(val_losses)),
        "class_weight": class_weight,
    }


def train_bundle(
    data_dir: Path,
    out: Path,
    name: str,
    version: str,
    options: TrainOptions,
    params: SpectrogramParams | None = None,
    labels: tuple[str, str] = ("not sick", "sick"),
    features: str = "embedding_mean",
) -> dict[str, Any]:
    params = params or SpectrogramParams()
    data_dir, out = Path(data_dir), Path(out)
    examples = load_dataset(data_dir)
    backbone, spec = make_backbone(options, params, features)
    data = extract(
        examples,
        backbone.embed,
        params.sample_rate,
        spec["cache"],
        options.cache_dir,
        options.progress,
    )
    splits = stratified_split(
        data.examples, options.test_fraction, options.validation_fraction, options.seed
    )
    parts = {k: data.subset({ex.sha256 for ex in v}) for k, v in splits.items()}
    head, fit_info = train_head(parts["train"], parts["validation"], options)
    threshold = choose_threshold(
        parts["validation"].labels, head.scores(parts["validation"].features)
    )
    rates = source_prevalence(parts["train"].labels, parts["train"].sources)
    test = parts["test"]
    test_scores = head.scores(test.features)
    report = evaluate(test.labels, test_scores, test.sources, threshold, options.seed, rates)
    report["evaluated_on"] = "held-out test split (never used for fitting or the threshold)"

    out.mkdir(parents=True, exist_ok=True)
    manifest_backbone = dict(spec["manifest"])
    if (
        isinstance(backbone, InceptionV3Backbone | InceptionTFLiteBackbone)
        and manifest_backbone["weights"] == "bundle"
    ):
        manifest_backbone["file"] = backbone.save_weights(out)
    card = {
        "intended_use": DISCLAIMER,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {
            "folder": data_dir.name,
            "recordings": len(examples),
            **data_quality(examples),
            "usable": len(data.examples),
            "rejected": {ex.path.name: code for ex, code in data.rejected},
            "positive_rate_by_source": source_prevalence(data.labels, data.sources),
        },
        "split": {
            "method": "stratified by label and source, by file content hash",
            "seed": options.seed,
            "sizes": {k: len(v.examples) for k, v in parts.items()},
        },
        "training": {**fit_info, "l2": options.l2, "learning_rate": options.learning_rate},
        "threshold_rule": "maximises sensitivity + specificity on the validation split",
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
    )
    write_bundle(out, manifest, head)
    (out / SPLIT_FILE).write_text(
        json.dumps({k: sorted({ex.sha256 for ex in v.examples}) for k, v in parts.items()}) + "\n"
    )
    write_outputs(out / EVALUATION_DIR, report, test.labels, test_scores, test.sources)
    return report
