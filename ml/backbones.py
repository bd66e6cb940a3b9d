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

from ml.bundle import BundleError, Manifest
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


def configure_tensorflow(threads: int | None = None) -> Any:
    """Import TensorFlow quietly and bound its thread pools (one per worker child)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

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


class InceptionV3Backbone:
    """Keras Inception V3 without its top, global-average pooled (2,048 features).

    The spectrogram is fed at its native size (n_mels x frames, at least 75x75);
    Inception's global pooling makes any such size valid.
    """

    name = "inception_v3"

    def __init__(
        self,
        params: SpectrogramParams,
        weights: str | None = "imagenet",
        threads: int | None = None,
        seed: int = 0,
    ) -> None:
        tf = configure_tensorflow(threads)
        import keras

        height, width = params.shape
        if height < 75 or width < 75:
            raise BundleError(f"Inception V3 needs at least 75x75 inputs, got {height}x{width}")
        self.params = params
        keras.utils.set_random_seed(seed)
        self.weights_source = weights
        self.network = keras.applications.InceptionV3(
            include_top=False,
            weights=weights,
            input_shape=(height, width, 3),
            pooling="avg",
        )
        self._call = tf.function(
            lambda x: self.network(x, training=False),
            input_signature=[tf.TensorSpec([None, height, width, 3], tf.float32)],
            reduce_retracing=True,
        )

    @classmethod
    def build_for_training(
        cls, params: SpectrogramParams, weights: str, threads: int | None = None, seed: int = 0
    ) -> InceptionV3Backbone:
        """ImageNet weights when obtainable; otherwise say so and use random weights."""
        if weights in (None, "none"):
            return cls(params, weights=None, threads=threads, seed=seed)
        try:
            return cls(params, weights=weights, threads=threads, seed=seed)
        except Exception as exc:  # keras raises plain Exception subclasses for fetch errors
            log.warning(
                "ImageNet weights for Inception V3 are not obtainable (%s: %s). "
                "Falling back to weights=None: features come from a randomly initialised "
                "network, which is only good for tests. Set TUSSIS_INCEPTION_WEIGHTS to a local "
                "'inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5' file to use them.",
                type(exc).__name__,
                exc,
            )
            return cls(params, weights=None, threads=threads, seed=seed)

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        images = spectrogram_batch(waveforms, self.params)
        return np.asarray(self._call(images), dtype=np.float32)

    def save_weights(self, bundle_dir: Path) -> str:
        self.network.save_weights(str(Path(bundle_dir) / INCEPTION_BACKBONE_WEIGHTS))
        return INCEPTION_BACKBONE_WEIGHTS


def inception_from_bundle(
    path: Path, manifest: Manifest, inception_weights: str, threads: int | None
) -> InceptionV3Backbone:
    source = manifest.backbone.get("weights", "imagenet")
    if source == "bundle":
        weights_file = Path(path) / manifest.backbone.get("file", INCEPTION_BACKBONE_WEIGHTS)
        if not weights_file.is_file():
            raise BundleError(f"bundle {path} lacks its backbone weights {weights_file.name}")
        backbone = InceptionV3Backbone(manifest.spectrogram, weights=None, threads=threads)
        backbone.network.load_weights(str(weights_file))
        return backbone
    if source == "imagenet":
        try:
            return InceptionV3Backbone(
                manifest.spectrogram, weights=inception_weights, threads=threads
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


class YamnetBackbone:
    """YAMNet (AudioSet) over 0.975 s windows, pooled over the clip.

    ``features="embedding_mean"``: the 1,024-d embeddings averaged over windows.
    ``features="embedding_mean+scores_max"``: those plus each of the 521 class
    scores at its maximum over windows (the first cough gate's features).
    ``features="window_embedding+logit_scores"``: one row per window, the
    embedding and the class scores as logits (the cough gate scores each window,
    so a short cough in a long recording is not averaged away).
    """

    name = "yamnet"
    FEATURES = ("embedding_mean", "embedding_mean+scores_max", WINDOW_FEATURES, CONTEXT_FEATURES)

    def __init__(
        self, model_path: Path, features: str = "embedding_mean", url: str | None = None
    ) -> None:
        if features not in self.FEATURES:
            raise BundleError(f"unknown YAMNet features {features!r}")
        self.features = features
        self.yamnet = shared_yamnet(model_path, url)

    def embed_windows(self, waveform: np.ndarray) -> np.ndarray:
        """Per-window features of one clip, one row per window."""
        windows = window_features(self.yamnet.run(waveform))
        return with_context(windows) if self.features == CONTEXT_FEATURES else windows

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        if self.features in (WINDOW_FEATURES, CONTEXT_FEATURES):
            raise BundleError("per-window features have one row per window: use embed_windows")
        rows = []
        for waveform in waveforms:
            out = self.yamnet.run(waveform)
            parts = [out.embeddings.mean(axis=0)]
            if self.features == "embedding_mean+scores_max":
                parts.append(out.scores.max(axis=0))
            rows.append(np.concatenate(parts))
        return np.stack(rows).astype(np.float32)
