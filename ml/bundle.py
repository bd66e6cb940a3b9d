"""Model bundles: a folder with ``manifest.json``, the head weights and, when
the backbone's weights cannot be obtained elsewhere, the backbone weights.

This module only reads and writes files (no TensorFlow), so the worker's
parent process can check bundles cheaply before any child loads one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml.preprocess import Preprocessing
from ml.spectrogram import SpectrogramParams

MANIFEST = "manifest.json"
HEAD_FILE = "head.npz"
FORMAT_VERSION = 1

# The hashes of the recordings a bundle was trained and validated on, so that
# evaluation can leave them out.
SPLIT_FILE = "split.json"

# How a backbone runs, as ``backbone["precision"]`` in the manifest: ``fp32`` is
# the Keras network (the default when the field is absent, as in every bundle
# written before the field existed); ``int8-dynamic`` is a TFLite file in the
# bundle with int8 weights and dynamically quantised activations, run with
# XNNPACK. Checked here, without TensorFlow, so a worker parent refuses an
# unknown value before any child loads the bundle.
FP32 = "fp32"
INT8_DYNAMIC = "int8-dynamic"
PRECISIONS = (FP32, INT8_DYNAMIC)


class BundleError(Exception):
    """A bundle is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    backbone: dict[str, Any]
    spectrogram: SpectrogramParams
    labels: tuple[str, str] = ("not sick", "sick")
    threshold: float = 0.5
    head: str = HEAD_FILE
    card: dict[str, Any] = field(default_factory=dict)
    # What is done to each waveform before the backbone (ml.preprocess); none in
    # bundles written before the field existed.
    preprocess: Preprocessing = field(default_factory=Preprocessing)
    # One sentence a person reads next to every score, and the headline
    # cross-validated mean within-source AUC it quotes (None in older bundles).
    caveat: str | None = None
    within_source_auc: float | None = None
    # Detector bundles (the cough gate) only: the window-score threshold for
    # counting events over long recordings, chosen apart from ``threshold`` (the
    # clip gate's). None in bundles written before counting existed.
    counting_threshold: float | None = None

    @property
    def backbone_name(self) -> str:
        return str(self.backbone["name"])

    @property
    def precision(self) -> str:
        return str(self.backbone.get("precision", FP32))

    @property
    def event_threshold(self) -> float:
        """The threshold counting uses: its own where chosen, else the gate's."""
        return self.threshold if self.counting_threshold is None else self.counting_threshold

    @property
    def negative_label(self) -> str:
        return self.labels[0]

    @property
    def positive_label(self) -> str:
        return self.labels[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "backbone": self.backbone,
            "spectrogram": self.spectrogram.to_dict(),
            "labels": list(self.labels),
            "threshold": self.threshold,
            "head": self.head,
            "preprocess": self.preprocess.to_dict(),
            "caveat": self.caveat,
            "within_source_auc": self.within_source_auc,
            **(
                {}
                if self.counting_threshold is None
                else {"counting_threshold": self.counting_threshold}
            ),
            "card": self.card,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT_VERSION:
            raise BundleError(f"unsupported bundle format {data.get('format')!r}")
        labels = tuple(data.get("labels", ("not sick", "sick")))
        if len(labels) != 2:
            raise BundleError("a bundle must have exactly two labels: [negative, positive]")
        threshold = float(data["threshold"])
        counting = data.get("counting_threshold")
        for value in (threshold, counting if counting is not None else 0.0):
            if not 0.0 <= float(value) <= 1.0:
                raise BundleError(f"thresholds must be within [0, 1], got {value}")
        precision = dict(data["backbone"]).get("precision", FP32)
        if precision not in PRECISIONS:
            raise BundleError(
                f"unknown backbone precision {precision!r}: this version runs "
                + " or ".join(repr(p) for p in PRECISIONS)
            )
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            backbone=dict(data["backbone"]),
            spectrogram=SpectrogramParams.from_dict(data["spectrogram"]),
            labels=(str(labels[0]), str(labels[1])),
            threshold=threshold,
            head=str(data.get("head", HEAD_FILE)),
            card=dict(data.get("card", {})),
            preprocess=Preprocessing.from_dict(data.get("preprocess")),
            caveat=None if data.get("caveat") is None else str(data["caveat"]),
            within_source_auc=(
                None if data.get("within_source_auc") is None else float(data["within_source_auc"])
            ),
            counting_threshold=None if counting is None else float(counting),
        )


@dataclass(frozen=True)
class Head:
    """Logistic regression on standardised backbone features."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        z = ((features - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0)))


def read_manifest(path: Path) -> Manifest:
    manifest_path = Path(path) / MANIFEST
    try:
        data = json.loads(manifest_path.read_text())
    except FileNotFoundError as exc:
        raise BundleError(f"no model bundle at {path} (missing {MANIFEST})") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {manifest_path}: {exc}") from exc
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"invalid manifest {manifest_path}: {exc}") from exc


def read_head(path: Path, manifest: Manifest) -> Head:
    head_path = Path(path) / manifest.head
    try:
        with np.load(head_path) as npz:
            return Head(
                mean=npz["mean"].astype(np.float32),
                scale=npz["scale"].astype(np.float32),
                weights=npz["weights"].astype(np.float32),
                bias=float(npz["bias"]),
            )
    except FileNotFoundError as exc:
        raise BundleError(f"bundle {path} lacks its head weights {manifest.head}") from exc


def write_bundle(path: Path, manifest: Manifest, head: Head) -> None:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    np.savez(
        path / manifest.head,
        mean=head.mean,
        scale=head.scale,
        weights=head.weights,
        bias=np.float32(head.bias),
    )
    write_manifest(path, manifest)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """``manifest.json`` alone (a detector bundle writes its own weights: ml.detector)."""
    Path(path).mkdir(parents=True, exist_ok=True)
    (Path(path) / MANIFEST).write_text(
        json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n"
    )


def fingerprint(path: Path) -> str:
    """Content hash of the bundle's files: two bundles with one fingerprint predict alike."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).iterdir() if p.is_file()):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()
