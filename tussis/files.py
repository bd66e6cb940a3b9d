"""Finding recordings under the paths a user gives, and hashing them."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tussis.errors import UsageProblem
from tussis.formats import AUDIO_SUFFIXES

# --- local files ---------------------------------------------------------------------

HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class LocalFile:
    path: Path  # where it is on disk
    rel: str  # the item's path in the batch (relative to the folder given)
    size: int
    sha256: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.rel, self.sha256)


def find_files(paths: Sequence[Path]) -> list[LocalFile]:
    """Audio files under each folder (relative to it) and each file given (by its name).

    Hidden files and folders (``.name``) are skipped inside folders; a file named on the
    command line is always taken, whatever its extension (the server judges it).
    """
    found: list[LocalFile] = []
    for given in paths:
        if given.is_dir():
            for dirpath, dirnames, filenames in os.walk(given):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith(".") or Path(name).suffix.lower() not in AUDIO_SUFFIXES:
                        continue
                    full = Path(dirpath) / name
                    if not full.is_file():
                        continue
                    rel = full.relative_to(given).as_posix()
                    found.append(LocalFile(full, rel, full.stat().st_size))
        elif given.is_file():
            found.append(LocalFile(given, given.name, given.stat().st_size))
        else:
            raise UsageProblem(f"{given}: no such file or folder")
    return found


def sha256_file(path: Path, on_bytes: Callable[[int], object] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
            if on_bytes:
                on_bytes(len(chunk))
    return digest.hexdigest()


def hash_files(files: Sequence[LocalFile], progress: bool | None) -> list[LocalFile]:
    with progress_bar(
        progress, total=sum(f.size for f in files), unit="B", unit_scale=True, desc="hashing"
    ) as bar:
        return [LocalFile(f.path, f.rel, f.size, sha256_file(f.path, bar.update)) for f in files]


def progress_bar(progress: bool | None, **kwargs: Any) -> tqdm:
    """A progress bar on stderr; ``progress=None`` shows it only on a terminal."""
    return tqdm(file=sys.stderr, disable=None if progress is None else not progress, **kwargs)
