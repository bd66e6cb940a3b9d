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
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.db import session_scope
from shared.tables import AudioBlob


class StorageError(Exception):
    """The audio store could not be read or written."""


class AudioNotFound(StorageError):
    pass


class AudioStorage(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def put_many(self, items: Mapping[str, bytes]) -> None:
        """Store every ``key: data`` of ``items`` at once: all of them, or (raising) none."""
        ...

    def put_new(self, session: Session, items: Mapping[str, bytes]) -> None:
        """Store ``items`` under keys never used before, as part of ``session``'s
        transaction where the store is the database (committed with the job rows in one
        commit, or not at all); a file store writes them now (``put_many``), and the
        caller deletes them if its transaction fails."""
        ...

    def get(self, key: str) -> bytes: ...

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The stored bytes of each of ``keys``; a key not stored is absent."""
        ...

    def delete(self, key: str) -> None: ...

    def delete_many(self, keys: Iterable[str]) -> None: ...

    def keys_older_than(self, cutoff: datetime) -> Iterator[str]:
        """Every stored key (audio and spectrograms) written before ``cutoff``."""
        ...


# Keys read per query while listing, so listing never holds a large result in memory.
_LIST_PAGE = 500


class DatabaseStorage:
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def put(self, key: str, data: bytes) -> None:
        with session_scope(self.database_url) as session:
            session.merge(AudioBlob(key=key, data=data))

    def put_many(self, items: Mapping[str, bytes]) -> None:
        # One transaction for a batch chunk's audio instead of one per recording. Like
        # put, a key already stored is replaced: its row is deleted first (one
        # statement), then every row goes in as one batched INSERT, not a merge (a
        # SELECT) per key.
        keys = list(items)
        with session_scope(self.database_url) as session:
            for start in range(0, len(keys), _LIST_PAGE):
                session.execute(
                    delete(AudioBlob).where(AudioBlob.key.in_(keys[start : start + _LIST_PAGE]))
                )
            session.add_all(AudioBlob(key=key, data=data) for key, data in items.items())

    def put_new(self, session: Session, items: Mapping[str, bytes]) -> None:
        # New keys (job ids): nothing to replace, so plain INSERTs, batched by the
        # session's flush into one statement with the job rows' own.
        session.add_all(AudioBlob(key=key, data=data) for key, data in items.items())

    def get(self, key: str) -> bytes:
        with session_scope(self.database_url) as session:
            data = session.scalar(select(AudioBlob.data).where(AudioBlob.key == key))
        if data is None:
            raise AudioNotFound(key)
        return bytes(data)

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        # One SELECT ... WHERE key IN (...) per slice (a worker's chunk is one slice),
        # all in one transaction: a chunk's audio in one round trip, not one per job.
        wanted = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        with session_scope(self.database_url) as session:
            for start in range(0, len(wanted), _LIST_PAGE):
                rows = session.execute(
                    select(AudioBlob.key, AudioBlob.data).where(
                        AudioBlob.key.in_(wanted[start : start + _LIST_PAGE])
                    )
                )
                found.update((key, bytes(data)) for key, data in rows)
        return found

    def delete(self, key: str) -> None:
        with session_scope(self.database_url) as session:
            session.execute(delete(AudioBlob).where(AudioBlob.key == key))

    def delete_many(self, keys: Iterable[str]) -> None:
        wanted = list(keys)
        # In slices: SQLite limits the number of bound parameters in one statement.
        for start in range(0, len(wanted), _LIST_PAGE):
            with session_scope(self.database_url) as session:
                session.execute(
                    delete(AudioBlob).where(AudioBlob.key.in_(wanted[start : start + _LIST_PAGE]))
                )

    def keys_older_than(self, cutoff: datetime) -> Iterator[str]:
        # Keyset pages on the primary key, one short transaction each, so the caller
        # may delete what it was given before asking for more.
        after = ""
        while True:
            with session_scope(self.database_url) as session:
                page = list(
                    session.scalars(
                        select(AudioBlob.key)
                        .where(AudioBlob.key > after, AudioBlob.created_at < cutoff)
                        .order_by(AudioBlob.key)
                        .limit(_LIST_PAGE)
                    )
                )
            yield from page
            if len(page) < _LIST_PAGE:
                return
            after = page[-1]


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

    def put_many(self, items: Mapping[str, bytes]) -> None:
        # Files have no transaction: write them one by one, and remove those written
        # if one fails, so a failure leaves none of them (as the database store does).
        written: list[str] = []
        try:
            for key, data in items.items():
                self.put(key, data)
                written.append(key)
        except BaseException:
            self.delete_many(written)
            raise

    def put_new(self, session: Session, items: Mapping[str, bytes]) -> None:
        self.put_many(items)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise AudioNotFound(key) from exc

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        # A file read is no network round trip: one at a time is all there is to it.
        found: dict[str, bytes] = {}
        for key in dict.fromkeys(keys):
            try:
                found[key] = self.get(key)
            except AudioNotFound:
                continue
        return found

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def keys_older_than(self, cutoff: datetime) -> Iterator[str]:
        """By modification time. Names starting with '.' are not keys (half-written
        uploads), so they are never listed."""
        try:
            entries = os.scandir(self.root)
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    mtime = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
                except FileNotFoundError:
                    continue  # deleted since the listing
                if mtime < cutoff:
                    yield entry.name


_SPECTROGRAM_SUFFIX = ".spectrogram.png"


def spectrogram_key(audio_key: str) -> str:
    """Where the worker keeps the spectrogram image it rendered for a job."""
    return f"{audio_key}{_SPECTROGRAM_SUFFIX}"


def audio_key_of(key: str) -> str:
    """The audio key a stored key belongs to: itself, or the audio of a spectrogram."""
    return key.removesuffix(_SPECTROGRAM_SUFFIX)


def make_storage(storage_url: str, database_url: str) -> AudioStorage:
    if storage_url == "database":
        return DatabaseStorage(database_url)
    if storage_url.startswith("file://"):
        return FileStorage(Path(storage_url.removeprefix("file://")))
    raise ValueError(
        f"TUSSIS_STORAGE_URL must be 'database' or 'file:///path', got {storage_url!r}"
    )
