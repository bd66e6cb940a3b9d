"""Where uploaded audio lives between the API and the worker.

One interface, three backends:

- ``database`` (the default for clip jobs) keeps the bytes in the SQL database:
  every worker on every host that can reach the database can read them, and
  nothing depends on the API host's disk surviving after the 202.
- ``file:///path`` stores files under a directory; use it only when that
  directory is shared by every host (a network volume). Long recordings use it
  by default (``TUSSIS_RECORDING_STORAGE_URL``).
- ``s3://bucket/prefix`` stores objects in an S3-compatible store (AWS S3, MinIO)
  through boto3, for deployments whose workers run on other machines.

Besides whole values (clips of at most ``TUSSIS_MAX_UPLOAD_BYTES``), the interface
has **streamed writes** (:meth:`AudioStorage.open_write`: a writer that takes the
bytes as they arrive and either commits them as one value or leaves nothing) and
**ranged reads** (:meth:`AudioStorage.read_range`), so an hours-long recording is
never held whole in memory by the API or a worker.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.db import session_scope
from shared.tables import AudioBlob

log = logging.getLogger(__name__)


class StorageError(Exception):
    """The audio store could not be read or written."""


class AudioNotFound(StorageError):
    pass


class StreamWriter(Protocol):
    """A value being written piece by piece: :meth:`commit` makes it readable under its
    key all at once; :meth:`abort` (or an exception in a ``with`` block) leaves nothing."""

    written: int  # bytes taken so far

    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...

    def __enter__(self) -> StreamWriter: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class _Writer:
    """What every backend's writer shares: the ``with`` block aborts on an exception
    (a refused or broken upload leaves nothing) and otherwise leaves the choice to the
    caller, who commits."""

    written = 0
    _done = False

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> _Writer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:
            self.abort()


class AudioStorage(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def open_write(self, key: str) -> StreamWriter:
        """A streamed write of ``key``: nothing is readable until the writer commits."""
        ...

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of ``key`` from byte ``start`` (fewer at its end);
        :class:`AudioNotFound` if it is not stored."""
        ...

    def size(self, key: str) -> int:
        """The stored value's length in bytes; :class:`AudioNotFound` if it is absent."""
        ...

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

    def open_write(self, key: str) -> StreamWriter:
        # A row is one value: the pieces are gathered and stored at commit. Only clips
        # (at most TUSSIS_MAX_UPLOAD_BYTES) live here; long recordings are refused this
        # backend (shared.config), so this never holds a recording in memory.
        return _BufferedWriter(lambda data: self.put(key, data))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        return self.get(key)[start : start + length]

    def size(self, key: str) -> int:
        return len(self.get(key))

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

    def open_write(self, key: str) -> StreamWriter:
        self.root.mkdir(parents=True, exist_ok=True)
        return _FileWriter(self.root, self._path(key))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as fh:
                fh.seek(start)
                return fh.read(max(0, length))
        except FileNotFoundError as exc:
            raise AudioNotFound(key) from exc

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
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


class _BufferedWriter(_Writer):
    def __init__(self, store: Any) -> None:
        self._parts: list[bytes] = []
        self._store = store

    def write(self, data: bytes) -> None:
        self._parts.append(bytes(data))
        self.written += len(data)

    def commit(self) -> None:
        self._done = True
        self._store(b"".join(self._parts))

    def abort(self) -> None:
        self._done = True
        self._parts.clear()


class _FileWriter(_Writer):
    """Into a hidden temporary file beside the target, renamed at commit: a reader never
    sees half a file, and the orphan pass never lists one (names starting with '.')."""

    def __init__(self, root: Path, target: Path) -> None:
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".upload-")
        self._fh = os.fdopen(fd, "wb")
        self._tmp = Path(tmp)
        self._target = target

    def write(self, data: bytes) -> None:
        self._fh.write(data)
        self.written += len(data)

    def commit(self) -> None:
        self._done = True
        self._fh.close()
        os.replace(self._tmp, self._target)

    def abort(self) -> None:
        self._done = True
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


# S3 multipart parts: at least 5 MiB each (S3's minimum, but the last); a writer holds
# one part in memory at most.
S3_PART_BYTES = 8 * 1024 * 1024
_S3_DELETE_PAGE = 1000  # DeleteObjects takes at most this many keys


class S3Storage:
    """Objects ``<prefix><key>`` in an S3-compatible bucket (AWS S3, MinIO), through boto3.

    Credentials and region come from boto3's usual sources (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, an instance role);
    ``endpoint_url`` points at a store other than AWS (``TUSSIS_S3_ENDPOINT_URL``)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        # Path-style addressing works with every S3-compatible store (MinIO, moto);
        # standard retries cover throttling and dropped connections.
        config = Config(
            s3={"addressing_style": "path"}, retries={"max_attempts": 5, "mode": "standard"}
        )
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, config=config
        )

    def _key(self, key: str) -> str:
        if "/" in key or key.startswith("."):
            raise StorageError(f"invalid storage key {key!r}")
        return self.prefix + key

    def _missing(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        return code in ("NoSuchKey", "404", "NotFound", "InvalidRange")

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def put_many(self, items: Mapping[str, bytes]) -> None:
        written: list[str] = []
        try:
            for key, data in items.items():
                self.put(key, data)
                written.append(key)
        except BaseException:
            self.delete_many(written)
            raise

    def put_new(self, session: Session, items: Mapping[str, bytes]) -> None:
        # Not the database: written now, and deleted by the caller if its rows fail.
        self.put_many(items)

    def get(self, key: str) -> bytes:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except self.client.exceptions.ClientError as exc:
            if self._missing(exc):
                raise AudioNotFound(key) from exc
            raise
        with body:
            return bytes(body.read())

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for key in dict.fromkeys(keys):
            try:
                found[key] = self.get(key)
            except AudioNotFound:
                continue
        return found

    def open_write(self, key: str) -> StreamWriter:
        return _S3Writer(self, self._key(key))

    def read_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{start + length - 1}"
            )
        except self.client.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "InvalidRange":  # from past the end: nothing there
                self.size(key)  # AudioNotFound where the object itself is missing
                return b""
            if self._missing(exc):
                raise AudioNotFound(key) from exc
            raise
        with answer["Body"] as body:
            return bytes(body.read())

    def size(self, key: str) -> int:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError as exc:
            if self._missing(exc):
                raise AudioNotFound(key) from exc
            raise
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_many(self, keys: Iterable[str]) -> None:
        wanted = [self._key(k) for k in keys]
        for start in range(0, len(wanted), _S3_DELETE_PAGE):
            page = wanted[start : start + _S3_DELETE_PAGE]
            self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in page], "Quiet": True},
            )

    def keys_older_than(self, cutoff: datetime) -> Iterator[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = str(item["Key"])[len(self.prefix) :]
                if "/" in name or name.startswith("."):
                    continue
                if item["LastModified"] < cutoff:
                    yield name


class _S3Writer(_Writer):
    """A multipart upload, one part (``S3_PART_BYTES``) buffered at a time; a value that
    never fills one part is one PutObject. Aborting removes the parts sent."""

    def __init__(self, storage: S3Storage, key: str) -> None:
        self._s3 = storage.client
        self._bucket = storage.bucket
        self._key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self._buffer += data
        self.written += len(data)
        while len(self._buffer) >= S3_PART_BYTES:
            self._send(bytes(self._buffer[:S3_PART_BYTES]))
            del self._buffer[:S3_PART_BYTES]

    def _send(self, part: bytes) -> None:
        if self._upload_id is None:
            created = self._s3.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = str(created["UploadId"])
        number = len(self._parts) + 1
        sent = self._s3.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=part,
        )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def commit(self) -> None:
        self._done = True
        try:
            if self._upload_id is None:
                self._s3.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer))
                return
            if self._buffer:
                self._send(bytes(self._buffer))
            self._s3.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except BaseException:
            self.abort()
            raise
        finally:
            self._buffer.clear()

    def abort(self) -> None:
        self._done = True
        self._buffer.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self._s3.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=upload_id
                )
            except Exception as exc:
                # The bucket's lifecycle rule for incomplete multipart uploads removes it.
                log.warning("could not abort the multipart upload of %s (%s)", self._key, exc)


_SPECTROGRAM_SUFFIX = ".spectrogram.png"


def spectrogram_key(audio_key: str) -> str:
    """Where the worker keeps the spectrogram image it rendered for a job."""
    return f"{audio_key}{_SPECTROGRAM_SUFFIX}"


def audio_key_of(key: str) -> str:
    """The audio key a stored key belongs to: itself, or the audio of a spectrogram."""
    return key.removesuffix(_SPECTROGRAM_SUFFIX)


def make_storage(
    storage_url: str, database_url: str, s3_endpoint_url: str | None = None
) -> AudioStorage:
    if storage_url == "database":
        return DatabaseStorage(database_url)
    if storage_url.startswith("file://"):
        return FileStorage(Path(storage_url.removeprefix("file://")))
    if storage_url.startswith("s3://"):
        bucket, prefix = parse_s3_url(storage_url)
        return S3Storage(bucket, prefix, s3_endpoint_url)
    raise ValueError(
        f"a storage URL must be 'database', 'file:///path' or 's3://bucket/prefix', "
        f"got {storage_url!r}"
    )


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""
