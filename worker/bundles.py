"""Which bundle folder this deployment holds for a model (name, version), and what
that bundle was trained or tuned on (its ``split.json``).

:func:`bundle_folder` is the one place that maps a model to its folder: one of the
diagnosis bundles this worker serves (``TUSSIS_MODEL_BUNDLES``).

``split.json`` lists content sha256s: the sha256 of the recording file's bytes
(ml.datasets.file_sha256), the same hash the API stores for an upload
(``jobs.audio_sha256``, the sha256 of the uploaded bytes), so an uploaded copy of a
training recording matches it byte for byte.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ml.bundle import SPLIT_FILE, BundleError, read_manifest
from shared.config import Settings

log = logging.getLogger("tussis.worker")

# Why an item is left out of the headline, by the split.json key that lists it.
TRAIN = "train"  # fitted on, or used to choose the threshold and the head (cross-validation)
CONFLICTING = "conflicting_labels"  # in the training data under both labels: dropped there
# Older bundles (ml/evaluation.py's seen_in_training) name a validation split too.
_TRAINED_KEYS = ("train", "validation")


def bundle_folder(settings: Settings, model_id: str, model_version: str) -> Path | None:
    """The folder of the bundle named ``model_id`` at ``model_version`` that this
    deployment holds; None when it holds none (a model since retired)."""
    for folder in settings.diagnosis_bundles:
        try:
            manifest = read_manifest(folder)
        except BundleError:
            continue
        if (manifest.name, manifest.version) == (model_id, model_version):
            return Path(folder)
    return None


@dataclass(frozen=True)
class TrainingSplit:
    """The contents a bundle saw while it was built, by reason."""

    trained: frozenset[str]
    conflicting: frozenset[str]

    def reason(self, sha256: str | None) -> str | None:
        """``train``, ``conflicting_labels`` or None (never seen: a fair item)."""
        if sha256 is None:
            return None
        if sha256 in self.trained:
            return TRAIN
        if sha256 in self.conflicting:
            return CONFLICTING
        return None


@lru_cache(maxsize=8)
def _read_split(path: Path, mtime_ns: int) -> TrainingSplit:
    data = json.loads(path.read_text())
    trained = frozenset(h for key in _TRAINED_KEYS for h in data.get(key, []))
    return TrainingSplit(trained, frozenset(data.get(CONFLICTING, [])))


def training_split(settings: Settings, model_id: str, model_version: str) -> TrainingSplit | None:
    """What the model was trained or tuned on; None when the deployment does not hold
    its bundle or the bundle records no split (then nothing can be left out, and the
    evaluation says so)."""
    folder = bundle_folder(settings, model_id, model_version)
    if folder is None:
        return None
    path = folder / SPLIT_FILE
    try:
        return _read_split(path, path.stat().st_mtime_ns)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None
