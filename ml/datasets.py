"""Labelled recordings for training and evaluation.

Two layouts are read:

* a folder per label, as TensorFlow's ``retrain.py`` took: ``DIR/sick/*.wav``,
  ``DIR/not sick/*.mp3`` (the folder name is the label, the source is ``DIR``);
* a ``metadata.json`` list like ``../shared/data/covid19-cough``: ``filename``
  (under ``raw/`` or beside the file), a boolean ``covid19`` label and a
  ``source`` kept as a group for per-source metrics.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from tussis.formats import AUDIO_SUFFIXES

log = logging.getLogger(__name__)

POSITIVE_FOLDER_NAMES = {"sick", "positive", "covid", "covid19", "cough"}
NEGATIVE_FOLDER_NAMES = {"not sick", "not_sick", "healthy", "negative", "no cough", "no_cough"}


@dataclass(frozen=True)
class Example:
    path: Path
    label: int  # 1 = the positive label ("sick")
    source: str
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _from_metadata(root: Path) -> list[Example]:
    entries = json.loads((root / "metadata.json").read_text())
    examples = []
    for entry in entries:
        path = root / "raw" / entry["filename"]
        if not path.is_file():
            path = root / entry["filename"]
        if not path.is_file():
            log.warning("metadata lists %s, which is not there; skipped", entry["filename"])
            continue
        examples.append(
            Example(
                path=path,
                label=int(bool(entry["covid19"])),
                source=str(entry.get("source") or "unknown"),
                sha256=file_sha256(path),
            )
        )
    return examples


def _from_folders(root: Path) -> list[Example]:
    examples = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        key = folder.name.lower()
        if key in POSITIVE_FOLDER_NAMES:
            label = 1
        elif key in NEGATIVE_FOLDER_NAMES:
            label = 0
        else:
            raise ValueError(
                f"folder {folder.name!r} in {root} is not a known label; use 'sick' and 'not sick'"
            )
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES:
                examples.append(Example(path, label, root.name, file_sha256(path)))
    return examples


def load_dataset(root: Path) -> list[Example]:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"no data folder at {root}")
    examples = _from_metadata(root) if (root / "metadata.json").is_file() else _from_folders(root)
    if not examples:
        raise ValueError(f"no recordings found in {root}")
    return examples
