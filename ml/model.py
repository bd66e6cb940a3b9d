"""The ``Model`` every prediction goes through: a bundle (``ml.bundle``) is a
backbone (``ml.backbones``) that turns waveforms into feature vectors, and a
logistic head on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml import yamnet
from ml.backbones import (
    Backbone,
    InceptionV3Backbone,
    ModelUnavailable,
    YamnetBackbone,
    inception_from_bundle,
)
from ml.bundle import BundleError, Head, Manifest, read_head, read_manifest
from ml.detector import WindowDetector
from ml.preprocess import Preprocessed

__all__ = ["Model", "ModelUnavailable", "Prediction", "load_model", "shares_yamnet_pass"]


Segment = tuple[float, float]  # start and end, in seconds from the clip's start


@dataclass(frozen=True)
class Prediction:
    score: float  # probability of the positive label ("sick", "cough")
    diagnosis: str
    # Window-pooled bundles (the cough gate) only: where the positive label was
    # found, overlapping windows merged; and the window that scored highest.
    segments: tuple[Segment, ...] = ()
    peak: Segment | None = None


def merge_windows(starts: Sequence[float], length: float) -> tuple[Segment, ...]:
    """Windows ``[start, start + length)`` as the fewest non-overlapping segments."""
    merged: list[list[float]] = []
    for start in sorted(starts):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], start + length)
        else:
            merged.append([start, start + length])
    return tuple((round(a, 3), round(b, 3)) for a, b in merged)


class Model:
    def __init__(
        self, path: Path, manifest: Manifest, backbone: Backbone, head: Head | WindowDetector
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.backbone = backbone
        self.head = head

    @property
    def id(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def sample_rate(self) -> int:
        return self.manifest.spectrogram.sample_rate

    @property
    def window_pooled(self) -> bool:
        """Scored per YAMNet window and pooled by the maximum: one cough anywhere
        in a long recording is enough."""
        return self.manifest.backbone.get("pooling") == "max"

    def window_scores(self, waveform: np.ndarray) -> np.ndarray:
        if not isinstance(self.backbone, YamnetBackbone):
            raise BundleError(f"{self.id}: window pooling needs the YAMNet backbone")
        if not self.manifest.preprocess.is_identity:
            waveform = self.manifest.preprocess.apply(waveform, self.sample_rate)
        return self.head.scores(self.backbone.embed_windows(waveform))

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        """The features the head scores: the manifest's preprocessing, then the
        backbone (``ml.preprocess.Preprocessed``, the path training took)."""
        return Preprocessed(self.backbone, self.manifest.preprocess, self.sample_rate).embed(
            waveforms
        )

    def scores(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        if self.window_pooled:
            return np.array([self.window_scores(w).max() for w in waveforms])
        if isinstance(self.head, WindowDetector):
            raise BundleError(f"{self.id}: a detector scores windows, not pooled clips")
        return self.head.scores(self.embed(waveforms))

    def predict(self, waveforms: Sequence[np.ndarray]) -> list[Prediction]:
        m = self.manifest
        if self.window_pooled:
            return [self._predict_windows(w) for w in waveforms]
        return [
            Prediction(
                score=float(s),
                diagnosis=m.positive_label if s >= m.threshold else m.negative_label,
            )
            for s in self.scores(waveforms)
        ]

    def _predict_windows(self, waveform: np.ndarray) -> Prediction:
        m = self.manifest
        per_window = self.window_scores(waveform)
        starts = np.arange(len(per_window)) * yamnet.HOP / yamnet.SAMPLE_RATE
        length = yamnet.WINDOW / yamnet.SAMPLE_RATE
        best = int(per_window.argmax())
        score = float(per_window[best])
        return Prediction(
            score=score,
            diagnosis=m.positive_label if score >= m.threshold else m.negative_label,
            segments=merge_windows(starts[per_window >= m.threshold].tolist(), length),
            peak=merge_windows([float(starts[best])], length)[0],
        )

    def warm_up(self) -> None:
        """One forward pass so graph tracing happens before the first job."""
        rng = np.random.default_rng(0)
        self.predict([rng.standard_normal(self.sample_rate).astype(np.float32) * 0.1])


def shares_yamnet_pass(a: Manifest, b: Manifest) -> bool:
    """Whether two bundles feed YAMNet the very same samples, so that the worker's
    cough gate and diagnosis model cost one YAMNet pass per clip, not two.

    The process-wide YAMNet (``ml.backbones.shared_yamnet``) remembers its recent
    outputs by the samples' digest, so the pass is shared exactly when this is
    true: both bundles run YAMNet at one sample rate and neither changes the
    waveform first (``preprocess``). A bundle that band-limits or normalises its
    input runs its own pass, as it must: the gate's output for the raw clip
    would be the wrong input for it.
    """
    return (
        a.backbone_name == b.backbone_name == YamnetBackbone.name
        and a.spectrogram.sample_rate == b.spectrogram.sample_rate
        and a.preprocess == b.preprocess
    )


def load_model(
    path: Path,
    inception_weights: str = "imagenet",
    yamnet_model: Path | None = None,
    threads: int | None = None,
    yamnet_url: str | None = None,
) -> Model:
    path = Path(path)
    manifest = read_manifest(path)
    # A cough detector bundle (ml.detector) names its design; its file holds more
    # than a logistic head (class groups, a veto, a cap).
    head: Head | WindowDetector = (
        WindowDetector.load(path / manifest.head)
        if "detector" in manifest.backbone
        else read_head(path, manifest)
    )
    if manifest.backbone_name == InceptionV3Backbone.name:
        backbone: Backbone = inception_from_bundle(path, manifest, inception_weights, threads)
    elif manifest.backbone_name == YamnetBackbone.name:
        if yamnet_model is None:
            raise ModelUnavailable(f"bundle {path} needs YAMNet: set TUSSIS_YAMNET_MODEL")
        features = manifest.backbone.get("features", "embedding_mean")
        try:
            backbone = YamnetBackbone(yamnet_model, features=features, url=yamnet_url)
        except BundleError:
            raise
        except Exception as exc:
            raise ModelUnavailable(f"cannot load YAMNet from {yamnet_model}: {exc}") from exc
    else:
        raise BundleError(f"unknown backbone {manifest.backbone_name!r} in {path}")
    return Model(path, manifest, backbone, head)
