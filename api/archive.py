"""Reading an uploaded ``.zip`` as untrusted input.

Whole-archive limits (not a zip, too long a member list, too many members, too
much uncompressed data, too much expansion or too high a ratio overall, a
malformed ``labels.csv``) reject the request; a bad member (unsafe path, nested archive, not audio,
suspicious compression ratio, too large) is reported on its own and the rest
of the batch goes ahead. Sizes are enforced while reading, not trusted from
the archive's headers. The member list (the central directory) is measured
before ``zipfile`` parses it: parsing builds an object per entry, and a 155 MB
upload can list 3 million entries (2.7 GB in a worker).
"""

from __future__ import annotations

import csv
import io
import lzma
import posixpath
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from api.errors import ApiError
from api.guards import has_control
from tussis.formats import AUDIO_SUFFIXES

ARCHIVE_SUFFIXES = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".jar"}
ARCHIVE_MAGIC = (b"PK\x03\x04", b"\x1f\x8b", b"7z\xbc\xaf", b"Rar!", b"BZh", b"\xfd7zXZ")
MANIFEST_NAMES = {"manifest.csv", "labels.csv"}
# Ratios are only judged on members (and archives) big enough for a bomb to matter;
# below this, the expansion bound (Limits.max_expansion) covers many small members.
RATIO_MIN_BYTES = 1024 * 1024
# The central directory may list this many entries per accepted member (folders and
# macOS's __MACOSX/ copies are listed too, and not counted as members), in at most this
# many bytes per entry on average (46 fixed, the name, extra fields): it is read into
# memory whole, and zipfile builds an object of about 500 bytes per entry it lists.
ENTRIES_PER_MEMBER = 3
DIRECTORY_BYTES_PER_ENTRY = 512
_DIRECTORY_ENTRY = struct.Struct("<4s24xHHH12x")  # signature ... name, extra, comment lengths
# The longest file name a job records (its filename column).
MAX_BASENAME = 255
# What reading a damaged member raises, besides zipfile's own BadZipFile: a corrupt
# deflate, bzip2 or LZMA stream, or a truncated header.
READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    ValueError,
)


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_uncompressed: int
    max_ratio: float
    max_member_bytes: int
    # Most bytes the members may expand to beyond the size of the archive itself: the
    # work a small upload can ask for (decoding is paid per byte) without sending it.
    max_expansion: int

    @property
    def max_entries(self) -> int:
        return ENTRIES_PER_MEMBER * self.max_members

    @property
    def max_directory_bytes(self) -> int:
        return DIRECTORY_BYTES_PER_ENTRY * self.max_entries


@dataclass(frozen=True)
class Member:
    path: str
    data: bytes | None = None
    code: str | None = None
    message: str | None = None


def safe_path(name: str) -> str | None:
    """A normalised relative POSIX path, or None if the name tries to escape, has a
    control character (a NUL reached PostgreSQL) or is too long to record."""
    if not name or "\\" in name or name.startswith("/") or has_control(name) or len(name) > 1024:
        return None
    if len(posixpath.basename(name)) > MAX_BASENAME:
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


# A labels file is read up to this size (in an archive, a larger member is not read
# as labels; as a request's ``labels`` part, it is refused).
MAX_LABELS_BYTES = 10**7


@dataclass(frozen=True)
class ItemLabel:
    """What a labels file says about one item: its label and its group (a site,
    device or recording source), either of which may be absent."""

    label: str | None
    group: str | None = None


def _invalid_labels(detail: str, source: str = "The archive's labels.csv") -> ApiError:
    return ApiError(422, "invalid_labels", f"{source} cannot be used: {detail}; fix it.")


def parse_labels(text: str, source: str) -> dict[str, ItemLabel]:
    """``path -> ItemLabel`` from a CSV with the columns ``path`` and ``label`` and an
    optional ``group`` (header names compared without case or surrounding spaces;
    other columns are ignored). Rows without a path are skipped; a path, label or
    group with a control character, or text the csv module cannot read, is a 422
    ``invalid_labels`` naming ``source``."""
    entries: dict[str, ItemLabel] = {}
    try:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames:
            reader.fieldnames = [name.strip().lower() for name in reader.fieldnames]
        for row in reader:
            path = row.get("path")
            # Extra or missing cells give lists or None, not text.
            label = row.get("label") if isinstance(row.get("label"), str) else None
            group = row.get("group") if isinstance(row.get("group"), str) else None
            if not isinstance(path, str) or not path or (label is None and group is None):
                continue
            if any(has_control(value) for value in (path, label or "", group or "")):
                raise _invalid_labels(
                    "a path, label or group contains a control character (such as a NUL byte)",
                    source,
                )
            entries[safe_path(path.strip()) or ""] = ItemLabel(
                (label or "").strip() or None, (group or "").strip() or None
            )
    except csv.Error as exc:
        raise _invalid_labels("it is not a readable CSV file", source) from exc
    return entries


def read_labels(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> dict[str, ItemLabel]:
    """``path -> ItemLabel`` from the first ``labels.csv``/``manifest.csv``; 422 if
    malformed."""
    for info in infos:
        name = posixpath.basename(info.filename).lower()
        if name in MANIFEST_NAMES and info.file_size < MAX_LABELS_BYTES:
            try:
                text = zf.read(info).decode("utf-8-sig", errors="replace")
            except READ_ERRORS as exc:
                raise _invalid_labels("it is damaged or encrypted") from exc
            return parse_labels(text, "The archive's labels.csv")
    return {}


def read_labels_part(data: bytes) -> dict[str, ItemLabel]:
    """The ``labels`` part of a ``files`` upload: the same CSV as an archive's
    labels.csv, its paths the uploaded files' names; 422 if malformed or too large."""
    source = "The request's labels file"
    if len(data) > MAX_LABELS_BYTES:
        raise _invalid_labels(f"it is larger than {MAX_LABELS_BYTES // 10**6} MB", source)
    return parse_labels(data.decode("utf-8-sig", errors="replace"), source)


def _check_expansion(uncompressed: int, archive_bytes: int, limits: Limits) -> None:
    """The whole archive, as declared or as read: bounded expansion, bounded ratio."""
    expansion = uncompressed - archive_bytes
    # Work in proportion to what was uploaded is fine (a big zip of WAV files that
    # deflate by a third); only what a small upload makes the server do is bounded.
    allowed = limits.max_expansion + archive_bytes
    if expansion > allowed:
        raise ApiError(
            422,
            "compression_ratio_too_high",
            f"The archive expands to {expansion / 1024**2:.0f} MiB more than its own size; at "
            f"most {allowed / 1024**2:.0f} MiB are accepted for it. Send it in several parts, "
            "or store the files without compression (zip -0).",
        )
    ratio = uncompressed / max(1, archive_bytes)
    if uncompressed >= RATIO_MIN_BYTES and ratio > limits.max_ratio:
        raise ApiError(
            422,
            "compression_ratio_too_high",
            f"The archive is compressed {ratio:.0f}:1 overall, which looks like a "
            "decompression bomb; it was not read.",
        )


def _archive_size(zf: zipfile.ZipFile) -> int:
    if zf.fp is None:
        return 0
    here = zf.fp.tell()
    size = zf.fp.seek(0, io.SEEK_END)
    zf.fp.seek(here)
    return size


def _too_many_entries(listed: str, limits: Limits) -> ApiError:
    return ApiError(
        422,
        "archive_too_many_members",
        f"The archive lists {listed}; at most {limits.max_members} files (with their "
        "folders) are accepted. Send it in several parts.",
    )


def check_directory(fileobj: IO[bytes], limits: Limits) -> None:
    """Refuse a member list too long to parse, before ``zipfile`` builds it: by the
    entry count and directory size the end records declare, then by counting the
    entries the directory really holds (zipfile reads entries until the declared size
    is used up, whatever count was declared). Reads at most
    ``limits.max_directory_bytes`` of the upload into memory."""
    # zipfile's own reader of the end records (and zip64 end records): the check
    # measures exactly the directory that ZipFile() is about to parse, which a second
    # parser of these records could be made to disagree with.
    end = zipfile._EndRecData(fileobj)  # type: ignore[attr-defined]
    if not end:
        raise zipfile.BadZipFile("no end of central directory record")
    declared, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if declared > limits.max_entries:
        raise _too_many_entries(f"{declared} entries", limits)
    if size > limits.max_directory_bytes:
        raise _too_many_entries(f"{size / 1024**2:.0f} MiB of entries", limits)
    # Where ZipFile.__init__ will start reading it (as _RealGetContents computes it).
    start = end[zipfile._ECD_LOCATION] - size  # type: ignore[attr-defined]
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:  # type: ignore[attr-defined]
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator  # type: ignore[attr-defined]
    if start < 0:
        return  # ZipFile refuses it
    fileobj.seek(start)
    directory = fileobj.read(size)
    entries, at = 0, 0
    while at + _DIRECTORY_ENTRY.size <= len(directory):
        signature, name, extra, comment = _DIRECTORY_ENTRY.unpack_from(directory, at)
        if signature != b"PK\x01\x02":
            return  # ZipFile refuses it
        entries += 1
        if entries > limits.max_entries:
            raise _too_many_entries(f"more than {limits.max_entries} entries", limits)
        at += _DIRECTORY_ENTRY.size + name + extra + comment


def open_archive(fileobj: IO[bytes], limits: Limits) -> tuple[zipfile.ZipFile, list, dict]:
    try:
        # The uploaded size, not the members' declared compressed sizes, which can lie.
        archive_bytes = fileobj.seek(0, io.SEEK_END)
        check_directory(fileobj, limits)
        fileobj.seek(0)
        zf = zipfile.ZipFile(fileobj)
    except READ_ERRORS as exc:
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
    _check_expansion(declared, archive_bytes, limits)
    labels = read_labels(zf, infos)
    members = [i for i in infos if posixpath.basename(i.filename).lower() not in MANIFEST_NAMES]
    return zf, members, labels


def iter_members(zf: zipfile.ZipFile, infos: list, limits: Limits) -> Iterator[Member]:
    total = 0
    archive_bytes = _archive_size(zf)
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
        except READ_ERRORS:
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
        _check_expansion(total, archive_bytes, limits)
        if data[:4] in ARCHIVE_MAGIC or data[:2] in ARCHIVE_MAGIC or data[:3] in ARCHIVE_MAGIC:
            yield Member(
                path,
                code="nested_archive",
                message="This file is an archive, not audio; unpack it first.",
            )
            continue
        yield Member(path, data=data)
