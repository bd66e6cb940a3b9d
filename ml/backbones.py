"""The backbones a bundle can name: they turn 16 kHz mono waveforms into
feature vectors for the bundle's head.

TensorFlow is imported only when a backbone is built, which happens in worker
*children* (``worker.lifecycle``) or in the training commands, never in the API
or in the Celery parent process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ml.bandwidth import high_share
from ml.bundle import FP32, INT8_DYNAMIC, BundleError, Manifest
from ml.spectrogram import SpectrogramParams, render

log = logging.getLogger(__name__)

INCEPTION_BACKBONE_WEIGHTS = "backbone.weights.h5"


class ModelUnavailable(Exception):
    """The configured model cannot be loaded on this machine."""


class Backbone(Protocol):
    name: str

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """Waveforms at the manifest's sample rate -> features, shape ``(n, dim)``."""
        ...


def limit_blas_threads() -> None:
    """numpy's BLAS (OpenBLAS) to one thread in this process.

    The spectrogram's mel projection (a 128x513 by 513x251 product per clip) goes
    through BLAS, whose threads spin on the same cores as TensorFlow's or TFLite's:
    beside a loaded network, rendering took 18-33 ms a clip with OpenBLAS's default
    threads and 5 ms with one (2-core machine), a third of each clip's time. A matrix
    that small gains nothing from more threads, and the worker runs one child per
    core anyway. threadpoolctl comes with scikit-learn; without it, nothing changes.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - installed with scikit-learn
        return
    threadpool_limits(limits=1, user_api="blas")


def configure_tensorflow(threads: int | None = None) -> Any:
    """Import TensorFlow quietly and bound its thread pools (one per worker child),
    and numpy's BLAS pool (:func:`limit_blas_threads`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    limit_blas_threads()

    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # already initialised in this process: keep what it has
    return tf


def spectrogram_batch(waveforms: Sequence[np.ndarray], params: SpectrogramParams) -> np.ndarray:
    """Render each clip (per-clip dB reference) and stack as 3-channel images in [-1, 1]."""
    images = np.stack([render(w, params) for w in waveforms])
    # Low frequencies at the bottom, as the spectrogram is drawn; 3 identical
    # channels because ImageNet networks expect RGB; [-1, 1] is Inception's range.
    images = images[:, ::-1, :] * 2.0 - 1.0
    return np.repeat(images[..., np.newaxis], 3, axis=-1).astype(np.float32)


# Where the Inception backbone may be cut. ``None`` (no "layer" in the manifest):
# the whole network, 2,048 pooled features. ``mixed8``: up to the mixed8 block,
# 1,280 pooled features; the only cut whose ImageNet weights exist on these
# machines (shared/models/INCEPTION.md: mixed9 and mixed10 are not recoverable).
MIXED8 = "mixed8"
INCEPTION_LAYERS: tuple[str | None, ...] = (None, MIXED8)
INCEPTION_INT8_FILE = "backbone.int8-dynamic.tflite"


def is_truncated_weights_file(weights: str | None) -> bool:
    """A Keras 3 weights file of the *truncated* network (``*.weights.h5``, as
    ``shared/models/inception_v3_imagenet_to_mixed8.weights.h5``), rather than
    ``imagenet`` or the full network's legacy ``..._notop.h5``."""
    return (
        weights is not None
        and weights not in ("imagenet", "none")
        and (str(weights).endswith(".weights.h5"))
    )


class InceptionV3Backbone:
    """Keras Inception V3 without its top, global-average pooled: the whole
    network (2,048 features) or, with ``layer="mixed8"``, up to mixed8 (1,280).

    The spectrogram is fed at its native size (n_mels x frames, at least 75x75);
    Inception's global pooling makes any such size valid.
    """

    name = "inception_v3"
    precision = FP32

    def __init__(
        self,
        params: SpectrogramParams,
        weights: str | None = "imagenet",
        threads: int | None = None,
        seed: int = 0,
        layer: str | None = None,
    ) -> None:
        tf = configure_tensorflow(threads)
        import keras

        if layer not in INCEPTION_LAYERS:
            raise BundleError(f"unknown Inception V3 layer {layer!r}: use mixed8 or none")
        height, width = params.shape
        if height < 75 or width < 75:
            raise BundleError(f"Inception V3 needs at least 75x75 inputs, got {height}x{width}")
        self.params = params
        self.layer = layer
        keras.utils.set_random_seed(seed)
        self.weights_source = weights
        truncated_file = is_truncated_weights_file(weights)
        full = keras.applications.InceptionV3(
            include_top=False,
            # A truncated weights file fits only the truncated model: load it below.
            weights=None if truncated_file else weights,
            input_shape=(height, width, 3),
            pooling="avg" if layer is None else None,
        )
        if layer is None:
            if truncated_file:
                raise BundleError(
                    f"{weights} holds a truncated Inception V3; use it with layer 'mixed8'"
                )
            # What the weights files hold and what is called: the same network.
            self.trunk = self.network = full
        else:
            self.trunk = keras.Model(full.input, full.get_layer(layer).output)
            if truncated_file:
                self.trunk.load_weights(str(weights))
            pooled = keras.layers.GlobalAveragePooling2D()(self.trunk.output)
            self.network = keras.Model(self.trunk.input, pooled)
        self._call = tf.function(
            lambda x: self.network(x, training=False),
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
            reduce_retracing=True,
        )

    @classmethod
    def build_for_training(
        cls,
        params: SpectrogramParams,
        weights: str,
        threads: int | None = None,
        seed: int = 0,
        layer: str | None = None,
    ) -> InceptionV3Backbone:
        """ImageNet weights when obtainable; otherwise say so and use random weights
        (the whole network only: a head on a cut network is asked for on purpose,
        and random features there would only hide a wrong path)."""
        if weights in (None, "none"):
            return cls(params, weights=None, threads=threads, seed=seed, layer=layer)
        if layer is None and is_truncated_weights_file(weights):
            raise ValueError(
                f"{weights} holds Inception V3 cut at a layer, not the whole network: "
                "add --inception-layer mixed8"
            )
        try:
            return cls(params, weights=weights, threads=threads, seed=seed, layer=layer)
        except Exception as exc:  # keras raises plain Exception subclasses for fetch errors
            if layer is not None:
                raise ModelUnavailable(
                    f"cannot load Inception V3 weights to {layer} from {weights!r} "
                    f"({type(exc).__name__}: {exc}). Point --inception-weights at "
                    "shared/models/inception_v3_imagenet_to_mixed8.weights.h5."
                ) from exc
            log.warning(
                "ImageNet weights for Inception V3 are not obtainable (%s: %s). "
                "Falling back to weights=None: features come from a randomly initialised "
                "network, which is only good for tests. Set TUSSIS_INCEPTION_WEIGHTS to a local "
                "'inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5' file to use them.",
                type(exc).__name__,
                exc,
            )
            return cls(params, weights=None, threads=threads, seed=seed, layer=layer)

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        return self.forward(spectrogram_batch(waveforms, self.params))

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Rendered spectrograms (:func:`spectrogram_batch`) -> pooled features."""
        return np.asarray(self._call(images), dtype=np.float32)

    def load_weights(self, weights_file: Path) -> None:
        self.trunk.load_weights(str(weights_file))

    def save_weights(self, bundle_dir: Path) -> str:
        self.trunk.save_weights(str(Path(bundle_dir) / INCEPTION_BACKBONE_WEIGHTS))
        return INCEPTION_BACKBONE_WEIGHTS


def convert_int8_dynamic(backbone: InceptionV3Backbone) -> bytes:
    """The Keras backbone (pooled features) as TFLite with dynamic-range int8 quantisation.

    ``Optimize.DEFAULT`` without a representative data set: weights are stored as
    int8 (per output channel), and each layer's input is quantised per call from
    its own range, so no calibration data is needed and nothing depends on which
    clips were seen. The input keeps the bundle's spectrogram size (n_mels x
    frames is fixed by the manifest: 128 x 251 for 4 s clips), so the converter
    can plan every layer's shape; only the batch dimension stays free.
    """
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    tf = configure_tensorflow()
    height, width = backbone.params.shape
    function = tf.function(lambda x: backbone.network(x, training=False))
    spec = tf.TensorSpec([None, height, width, 3], tf.float32)
    # Variables frozen into constants first: the same file, byte for byte in its
    # outputs, as ``from_keras_model`` gives, in a third of the time (that one
    # writes and reloads a SavedModel of the whole network).
    frozen = convert_variables_to_constants_v2(function.get_concrete_function(spec))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return bytes(converter.convert())


class InceptionTFLiteBackbone:
    """The Inception backbone converted by :func:`convert_int8_dynamic`, run by the
    LiteRT interpreter with its default XNNPACK delegate (which runs the
    dynamically quantised convolutions; without it they take ~3x longer).

    LiteRT (``ai_edge_litert``), not ``tf.lite``: the same kernels (identical
    features, measured) without importing TensorFlow, so a worker child serving an
    int8 bundle starts without it, as a YAMNet child does (``ml.yamnet``).

    One clip per ``invoke``: the measured throughput of batch 8 was no better, and
    a fixed input shape avoids re-planning the interpreter for each batch size.
    The interpreter is not thread-safe: one instance per worker child, as for YAMNet.
    """

    name = "inception_v3"
    precision = INT8_DYNAMIC

    def __init__(
        self, params: SpectrogramParams, model_content: bytes, threads: int | None = None
    ) -> None:
        import importlib

        # Imported by name: the package ships no type information (typed as Any).
        interpreter_class = importlib.import_module("ai_edge_litert.interpreter").Interpreter
        limit_blas_threads()
        self.params = params
        self.model_content = model_content
        height, width = params.shape
        self.interpreter = interpreter_class(
            model_content=model_content, num_threads=threads or os.cpu_count() or 1
        )
        (inp,) = self.interpreter.get_input_details()
        if tuple(inp["shape"][1:]) != (height, width, 3):
            raise BundleError(
                f"the converted Inception V3 takes {tuple(inp['shape'][1:])} inputs, but the "
                f"manifest's spectrogram is {height}x{width}x3: convert it again"
            )
        self.interpreter.resize_tensor_input(inp["index"], [1, height, width, 3])
        self.interpreter.allocate_tensors()
        self._input = inp["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        return self.forward(spectrogram_batch(waveforms, self.params))

    def forward(self, images: np.ndarray) -> np.ndarray:
        """Rendered spectrograms (:func:`spectrogram_batch`) -> pooled features."""
        rows = []
        for image in images:
            self.interpreter.set_tensor(self._input, image[np.newaxis])
            self.interpreter.invoke()
            rows.append(self.interpreter.get_tensor(self._output)[0].copy())
        return np.stack(rows).astype(np.float32)

    def save_weights(self, bundle_dir: Path) -> str:
        (Path(bundle_dir) / INCEPTION_INT8_FILE).write_bytes(self.model_content)
        return INCEPTION_INT8_FILE


# ``backbone["weights"]`` of a bundle that references its pretrained backbone
# instead of carrying a copy: ``backbone["pretrained"]`` names the file (``path``,
# relative to the bundle's folder, as written at training) and its ``sha256``. The
# shipped Inception bundle does this, so the 43 MB ImageNet weights to mixed8 stay in
# ../shared and are never committed twice (the head was fitted on exactly those
# weights, frozen: a copy would be byte for byte the same tensors).
PRETRAINED = "pretrained"


def pretrained_weights_file(path: Path, manifest: Manifest, inception_weights: str) -> Path:
    """The pretrained weights file a bundle references, checked against its sha256.

    ``inception_weights`` (TUSSIS_INCEPTION_WEIGHTS) wins when it names a cut
    network's ``*.weights.h5`` (a deployment keeps the file elsewhere, e.g. a
    container volume); otherwise the manifest's path, relative to the bundle. A
    missing file or a different one is refused here, before any job: a head fitted
    on these features is meaningless on others.
    """
    from ml.yamnet import sha256_of

    pretrained = manifest.backbone.get(PRETRAINED)
    if not isinstance(pretrained, dict) or not pretrained.get("sha256"):
        raise BundleError(
            f"bundle {path} references its backbone weights but its manifest names no "
            "backbone.pretrained.sha256 to check them against"
        )
    expected = str(pretrained["sha256"])
    if is_truncated_weights_file(inception_weights):
        weights_file, where = Path(inception_weights), "TUSSIS_INCEPTION_WEIGHTS"
    elif pretrained.get("path"):
        weights_file, where = Path(path) / str(pretrained["path"]), "the bundle's manifest"
    else:
        raise ModelUnavailable(
            f"bundle {manifest.name} needs {pretrained.get('source', 'its backbone weights')} "
            f"(sha256 {expected}): set TUSSIS_INCEPTION_WEIGHTS to that file"
        )
    if not weights_file.is_file():
        raise ModelUnavailable(
            f"bundle {manifest.name} {manifest.version} needs the Inception V3 weights "
            f"{pretrained.get('source', '')} (sha256 {expected}), not found at {weights_file} "
            f"(from {where}): put the file there or set TUSSIS_INCEPTION_WEIGHTS to its path"
        )
    actual = sha256_of(weights_file)
    if actual != expected:
        raise BundleError(
            f"bundle {manifest.name} {manifest.version} was trained on Inception V3 weights "
            f"with sha256 {expected}, but {weights_file} (from {where}) has sha256 {actual}: "
            "these are other weights, refused"
        )
    return weights_file


def inception_from_bundle(
    path: Path, manifest: Manifest, inception_weights: str, threads: int | None
) -> InceptionV3Backbone | InceptionTFLiteBackbone:
    layer = manifest.backbone.get("layer")
    if layer not in INCEPTION_LAYERS:
        raise BundleError(f"unknown Inception V3 layer {layer!r} in {path}: use mixed8 or none")
    source = manifest.backbone.get("weights", "imagenet")
    if manifest.precision == INT8_DYNAMIC:
        # The converted file is shipped, not made at load: conversion takes ~20 s and
        # a few GB in every worker child, and the shipped file is exactly the one
        # whose AUC the bundle's card reports.
        if source != "bundle":
            raise BundleError(
                f"bundle {path} is {INT8_DYNAMIC} but its weights are {source!r}: an "
                f"{INT8_DYNAMIC} bundle ships its converted backbone (weights 'bundle')"
            )
        model_file = Path(path) / manifest.backbone.get("file", INCEPTION_INT8_FILE)
        if not model_file.is_file():
            raise BundleError(f"bundle {path} lacks its backbone weights {model_file.name}")
        return InceptionTFLiteBackbone(manifest.spectrogram, model_file.read_bytes(), threads)
    if source == PRETRAINED:
        # The file is checked before the network is built: a wrong deployment fails in
        # a fraction of a second, not after TensorFlow's start.
        weights_file = pretrained_weights_file(path, manifest, inception_weights)
        backbone = InceptionV3Backbone(
            manifest.spectrogram, weights=None, threads=threads, layer=layer
        )
        backbone.load_weights(weights_file)
        return backbone
    if source == "bundle":
        weights_file = Path(path) / manifest.backbone.get("file", INCEPTION_BACKBONE_WEIGHTS)
        if not weights_file.is_file():
            raise BundleError(f"bundle {path} lacks its backbone weights {weights_file.name}")
        backbone = InceptionV3Backbone(
            manifest.spectrogram, weights=None, threads=threads, layer=layer
        )
        backbone.load_weights(weights_file)
        return backbone
    if source == "imagenet":
        try:
            return InceptionV3Backbone(
                manifest.spectrogram, weights=inception_weights, threads=threads, layer=layer
            )
        except Exception as exc:
            # A head trained on ImageNet features is meaningless on random ones: refuse.
            raise ModelUnavailable(
                f"bundle {manifest.name} needs Inception V3 ImageNet weights, which could not be "
                f"loaded from {inception_weights!r} ({type(exc).__name__}: {exc}). Download "
                "them once on a machine with internet or point TUSSIS_INCEPTION_WEIGHTS at "
                "the local .h5 file."
            ) from exc
    raise BundleError(f"unknown Inception V3 weights source {source!r} in {path}")


WINDOW_FEATURES = "window_embedding+logit_scores"
# The same, plus what the whole recording sounds like (its mean and maximum class
# logits and its mean embedding) on every row: a cough-like burst inside
# a recording of speech or sneezes is judged with that context.
CONTEXT_FEATURES = "window_embedding+logit_scores+recording_context"
# The per-window rows plus one column: how far the window's loud event reaches
# above 4 kHz (ml.bandwidth.high_share), from the window's own samples: a detector
# that trusts YAMNet's voice classes on wideband windows only needs it.
BAND_FEATURES = "window_embedding+logit_scores+high_band_share"


def window_features(out: Any) -> np.ndarray:
    """A YAMNet output's windows as rows: the embedding, then each class score's
    logit (so that "0.001 vs 0.01" weighs as much as "0.9 vs 0.99")."""
    p = np.clip(out.scores.astype(np.float64), 1e-4, 1 - 1e-4)
    return np.hstack([out.embeddings, np.log(p / (1 - p))]).astype(np.float32)


def with_context(windows: np.ndarray) -> np.ndarray:
    """Per-window features (:func:`window_features`) -> the same rows with the
    recording's context appended (:data:`CONTEXT_FEATURES`), 3,611 columns."""
    embeddings, logits = windows[:, :1024], windows[:, 1024:]
    context = np.concatenate([logits.mean(axis=0), logits.max(axis=0), embeddings.mean(axis=0)])
    return np.hstack([windows, np.repeat(context[np.newaxis], len(windows), axis=0)])


_yamnet_instances: dict[str, Any] = {}


def shared_yamnet(model_path: Path, url: str | None = None) -> Any:
    """One YAMNet interpreter per process, shared by the diagnosis model and the cough gate."""
    from ml.yamnet import Yamnet, ensure_model_file

    key = str(Path(model_path).resolve())
    if key not in _yamnet_instances:
        path = ensure_model_file(Path(model_path), url)
        _yamnet_instances[key] = Yamnet(path)
    return _yamnet_instances[key]


# The pooled YAMNet features a bundle may name, joined by "+" in the manifest's
# ``backbone.features`` (e.g. "embedding_mean+embedding_max+embedding_std"): the
# head's columns follow the order written.
POOLED_PARTS = (
    "embedding_mean",
    "embedding_max",
    "embedding_std",
    "scores_mean",
    "scores_max",
    "acoustic",
)
ALL_POOLED = "+".join(POOLED_PARTS)


def _pooled_parts(features: str) -> list[str]:
    parts = features.split("+")
    if not parts or any(p not in POOLED_PARTS for p in parts) or len(set(parts)) != len(parts):
        raise BundleError(f"unknown YAMNet features {features!r}")
    return parts


def pool_yamnet(out: Any, waveform: np.ndarray, features: str) -> np.ndarray:
    """One recording's YAMNet output pooled over its windows as ``features`` names."""
    from ml import acoustic, yamnet

    parts = []
    for part in _pooled_parts(features):
        if part == "embedding_mean":
            parts.append(out.embeddings.mean(axis=0))
        elif part == "embedding_max":
            parts.append(out.embeddings.max(axis=0))
        elif part == "embedding_std":
            parts.append(out.embeddings.std(axis=0))
        elif part == "scores_mean":
            parts.append(out.scores.mean(axis=0))
        elif part == "scores_max":
            parts.append(out.scores.max(axis=0))
        else:  # acoustic
            parts.append(
                acoustic.features(waveform, yamnet.SAMPLE_RATE, acoustic.cough_column(out.scores))
            )
    return np.concatenate(parts).astype(np.float32)


def pooled_columns(features: str) -> dict[str, slice]:
    """Where each part of ``features`` lies in its vector."""
    from ml import acoustic

    widths = {"acoustic": acoustic.SIZE, "scores_mean": 521, "scores_max": 521}
    columns, start = {}, 0
    for part in _pooled_parts(features):
        width = widths.get(part, 1024)
        columns[part] = slice(start, start + width)
        start += width
    return columns


class YamnetBackbone:
    """YAMNet (AudioSet) over 0.975 s windows, pooled over the clip.

    ``features="embedding_mean"``: the 1,024-d embeddings averaged over windows;
    any "+"-joined list of :data:`POOLED_PARTS` pools more (the embedding's
    maximum and standard deviation over windows, the 521 class scores' mean or
    maximum, level-independent acoustic features from ``ml.acoustic``), e.g.
    ``"embedding_mean+scores_max"`` (the first cough gate's features).
    ``features="window_embedding+logit_scores"``: one row per window, the
    embedding and the class scores as logits (the cough gate scores each window,
    so a short cough in a long recording is not averaged away).
    """

    name = "yamnet"
    WINDOW_FEATURES = (WINDOW_FEATURES, CONTEXT_FEATURES, BAND_FEATURES)

    def __init__(
        self, model_path: Path, features: str = "embedding_mean", url: str | None = None
    ) -> None:
        if features not in self.WINDOW_FEATURES:
            _pooled_parts(features)  # raises BundleError for an unknown name
        self.features = features
        self.yamnet = shared_yamnet(model_path, url)

    def embed_windows(self, waveform: np.ndarray) -> np.ndarray:
        """Per-window features of one clip, one row per window."""
        windows = window_features(self.yamnet.run(waveform))
        if self.features == BAND_FEATURES:
            return np.hstack([windows, high_share(waveform)[:, None]])
        return with_context(windows) if self.features == CONTEXT_FEATURES else windows

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        if self.features in self.WINDOW_FEATURES:
            raise BundleError("per-window features have one row per window: use embed_windows")
        rows = [pool_yamnet(self.yamnet.run(w), w, self.features) for w in waveforms]
        return np.stack(rows).astype(np.float32)
