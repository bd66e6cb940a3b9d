"""Reading an uploaded ``.zip`` as untrusted input.

Whole-archive limits (not a zip, too many members, too much uncompressed data)
reject the request; a bad member (unsafe path, nested archive, not audio,
suspicious compression ratio, too large) is reported on its own and the rest
of the batch goes ahead. Sizes are enforced while reading, not trusted from
the archive's headers.
"""

from __future__ import annotations

import csv
import io
import posixpath
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from api.errors import ApiError
from tussis.formats import AUDIO_SUFFIXES

ARCHIVE_SUFFIXES = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".jar"}
ARCHIVE_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!", b"BZh", b"\xfd7zXZ")
MANIFEST_NAMES = {"manifest.csv", "labels.csv"}
# Ratios are only judged on members big enough for a bomb to matter.
RATIO_MIN_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_uncompressed: int
    max_ratio: float
    max_member_bytes: int


@dataclass(frozen=True)
class Member:
    path: str
    data: bytes | None = None
    code: str | None = None
    message: str | None = None


def safe_path(name: str) -> str | None:
    """A normalised relative POSIX path, or None if the name tries to escape."""
    if not name or "\\" in name or name.startswith("/") or "\x00" in name or len(name) > 1024:
        return None
    if len(name) > 2 and name[1] == ":":
        return None  # a drive letter
    normal = posixpath.normpath(name)
    if normal.startswith("../") or normal == ".." or normal.startswith("/"):
        return None
    if any(part == ".." for part in name.split("/")):
        return None
    return normal


def _ignored(name: str) -> bool:
    """Folders and the operating systems' litter, which nobody meant to analyse."""
    base = posixpath.basename(name.rstrip("/"))
    return name.endswith("/") or name.startswith("__MACOSX/") or base in {".DS_Store", "Thumbs.db"}


def read_labels(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> dict[str, str]:
    for info in infos:
        if posixpath.basename(info.filename).lower() in MANIFEST_NAMES and info.file_size < 10**7:
            text = zf.read(info).decode("utf-8-sig", errors="replace")
            rows = csv.DictReader(io.StringIO(text))
            return {
                safe_path(r["path"].strip()) or "": r["label"].strip()
                for r in rows
                if r.get("path") and r.get("label") is not None
            }
    return {}


def open_archive(fileobj: IO[bytes], limits: Limits) -> tuple[zipfile.ZipFile, list, dict]:
    try:
        zf = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ApiError(422, "invalid_archive", "The archive is not a readable .zip file.") from exc
    infos = [i for i in zf.infolist() if not _ignored(i.filename)]
    if len(infos) > limits.max_members:
        raise ApiError(
            422,
            "archive_too_many_members",
            f"The archive holds {len(infos)} files; at most {limits.max_members} are accepted.",
        )
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_uncompressed:
        raise ApiError(
            422,
            "archive_too_large",
            f"The archive expands to {declared / 1024**3:.1f} GiB; at most "
            f"{limits.max_uncompressed / 1024**3:.1f} GiB are accepted.",
        )
    labels = read_labels(zf, infos)
    members = [i for i in infos if posixpath.basename(i.filename).lower() not in MANIFEST_NAMES]
    return zf, members, labels


def iter_members(zf: zipfile.ZipFile, infos: list, limits: Limits) -> Iterator[Member]:
    total = 0
    for info in infos:
        path = safe_path(info.filename)
        if path is None:
            yield Member(
                info.filename,
                code="unsafe_path",
                message="The file name leaves the archive's folder; it was not read.",
            )
            continue
        suffix = posixpath.splitext(path)[1].lower()
        if suffix in ARCHIVE_SUFFIXES:
            yield Member(
                path,
                code="nested_archive",
                message="Archives inside the archive are not opened; unpack them first.",
            )
            continue
        if suffix not in AUDIO_SUFFIXES:
            yield Member(
                path,
                code="not_audio",
                message="This is not an audio file (by its extension); it was skipped.",
            )
            continue
        if info.file_size > limits.max_member_bytes:
            yield Member(
                path,
                code="upload_too_large",
                message="This file is larger than the per-recording upload limit.",
            )
            continue
        ratio = info.file_size / max(1, info.compress_size)
        if info.file_size >= RATIO_MIN_BYTES and ratio > limits.max_ratio:
            yield Member(
                path,
                code="compression_ratio_too_high",
                message=f"This file is compressed {ratio:.0f}:1, which looks like a "
                "decompression bomb; it was not read.",
            )
            continue
        try:
            with zf.open(info) as fh:
                data = fh.read(limits.max_member_bytes + 1)
        except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError):
            yield Member(
                path,
                code="undecodable_audio",
                message="This archive member is damaged or encrypted and cannot be read.",
            )
            continue
        if len(data) > limits.max_member_bytes:
            yield Member(
                path,
                code="upload_too_large",
                message="This file is larger than the per-recording upload limit.",
            )
            continue
        total += len(data)
        if total > limits.max_uncompressed:
            raise ApiError(
                422,
                "archive_too_large",
                "The archive expands to more data than its headers declare.",
            )
        if data[:4] in ARCHIVE_MAGIC or data[:2] in ARCHIVE_MAGIC or data[:3] in ARCHIVE_MAGIC:
            yield Member(
                path,
                code="nested_archive",
                message="This file is an archive, not audio; unpack it first.",
            )
            continue
        yield Member(path, data=data)
