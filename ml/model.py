"""The ``Model`` every prediction goes through: a bundle (``ml.bundle``) is a
backbone (``ml.backbones``) that turns waveforms into feature vectors, and a
logistic head on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.backbones import (
    Backbone,
    InceptionV3Backbone,
    ModelUnavailable,
    YamnetBackbone,
    inception_from_bundle,
)
from ml.bundle import BundleError, Head, Manifest, read_head, read_manifest

__all__ = ["Model", "ModelUnavailable", "Prediction", "load_model"]


@dataclass(frozen=True)
class Prediction:
    score: float  # probability of the positive label ("sick")
    diagnosis: str


class Model:
    def __init__(self, path: Path, manifest: Manifest, backbone: Backbone, head: Head) -> None:
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

    def scores(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        return self.head.scores(self.backbone.embed(waveforms))

    def predict(self, waveforms: Sequence[np.ndarray]) -> list[Prediction]:
        m = self.manifest
        return [
            Prediction(
                score=float(s),
                diagnosis=m.positive_label if s >= m.threshold else m.negative_label,
            )
            for s in self.scores(waveforms)
        ]

    def warm_up(self) -> None:
        """One forward pass so graph tracing happens before the first job."""
        rng = np.random.default_rng(0)
        self.predict([rng.standard_normal(self.sample_rate).astype(np.float32) * 0.1])


def load_model(
    path: Path,
    inception_weights: str = "imagenet",
    yamnet_model: Path | None = None,
    threads: int | None = None,
    yamnet_url: str | None = None,
) -> Model:
    path = Path(path)
    manifest = read_manifest(path)
    head = read_head(path, manifest)
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
