"""Where uploaded audio lives between the API and the worker.

The default keeps the bytes in the SQL database: every worker on every host
that can reach the database can read them, and nothing depends on the API
host's disk surviving after the 202. ``file:///path`` stores files under a
directory instead; use it only when that directory is shared by every host
(a network volume).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, select

from shared.db import session_scope
from shared.tables import AudioBlob


class StorageError(Exception):
    """The audio store could not be read or written."""


class AudioNotFound(StorageError):
    pass


class AudioStorage(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def delete(self, key: str) -> None: ...


class DatabaseStorage:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def put(self, key: str, data: bytes) -> None:
        with session_scope(self.database_url) as session:
            session.merge(AudioBlob(key=key, data=data))

    def get(self, key: str) -> bytes:
        with session_scope(self.database_url) as session:
            data = session.scalar(select(AudioBlob.data).where(AudioBlob.key == key))
        if data is None:
            raise AudioNotFound(key)
        return bytes(data)

    def delete(self, key: str) -> None:
        with session_scope(self.database_url) as session:
            session.execute(delete(AudioBlob).where(AudioBlob.key == key))


class FileStorage:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if "/" in key or key.startswith("."):
            raise StorageError(f"invalid storage key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".upload-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, self._path(key))

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise AudioNotFound(key) from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def spectrogram_key(audio_key: str) -> str:
    """Where the worker keeps the spectrogram image it rendered for a job."""
    return f"{audio_key}.spectrogram.png"


def make_storage(storage_url: str, database_url: str) -> AudioStorage:
    if storage_url == "database":
        return DatabaseStorage(database_url)
    if storage_url.startswith("file://"):
        return FileStorage(Path(storage_url.removeprefix("file://")))
    raise ValueError(
        f"TUSSIS_STORAGE_URL must be 'database' or 'file:///path', got {storage_url!r}"
    )
