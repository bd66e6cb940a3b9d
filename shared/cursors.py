"""The one cursor format of every listing (jobs, batches, a batch's items).

A cursor is opaque to clients: URL-safe base64, without padding, of a small JSON
array whose first element names the listing (``["jobs", "<created_at>", "<id>"]``,
``["items", 42]``). Its alphabet is ``A-Z a-z 0-9 - _``, so it pastes into a URL
or a shell unquoted, and a cursor of one listing is refused by another.

Decoding checks everything a client could have forged (the shape, ASCII-only
timestamps with a time zone, bounded numbers), and raises :class:`InvalidCursor`
(a ``ValueError``) for anything this service did not issue: never an error that
would reach the database.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime
from typing import Any

KIND_JOBS = "jobs"
KIND_BATCHES = "batches"
KIND_ITEMS = "items"
KIND_RECORDINGS = "recordings"
KIND_EVENTS = "events"

# Longest cursor accepted: an issued one is under 120 characters.
MAX_LENGTH = 512
ALPHABET = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
# What ``datetime.isoformat()`` writes for an aware UTC time; ASCII digits only
# (``fromisoformat`` alone would take other forms a client could slip in).
_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})", re.ASCII
)
_ID = re.compile(r"[0-9A-Za-z-]{1,64}", re.ASCII)
# Batch sequence numbers are a 32-bit INTEGER column.
MAX_SEQ = 2**31 - 1


class InvalidCursor(ValueError):
    """Not a cursor this service issued (for this listing)."""


def _encode(parts: list[Any]) -> str:
    raw = json.dumps(parts, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode(cursor: str, kind: str) -> list[Any]:
    if not (0 < len(cursor) <= MAX_LENGTH and ALPHABET.fullmatch(cursor)):
        raise InvalidCursor("not URL-safe base64")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor("not a cursor") from exc
    if not (isinstance(parts, list) and parts and parts[0] == kind):
        raise InvalidCursor(f"not a cursor of {kind}")
    return parts[1:]


def encode_time_id(kind: str, created_at: datetime, row_id: str) -> str:
    """The cursor after a row of a newest-first listing keyed on (created_at, id)."""
    return _encode([kind, created_at.astimezone(UTC).isoformat(), row_id])


def decode_time_id(cursor: str, kind: str) -> tuple[datetime, str]:
    """(created_at, id) of the last row of the previous page, created_at aware UTC."""
    parts = _decode(cursor, kind)
    if len(parts) != 2 or not all(isinstance(p, str) for p in parts):
        raise InvalidCursor("wrong shape")
    created_text, row_id = parts
    if not (_TIMESTAMP.fullmatch(created_text) and _ID.fullmatch(row_id)):
        raise InvalidCursor("wrong values")
    try:
        created = datetime.fromisoformat(created_text.replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError) as exc:  # month 13; year 1 shifted before year 1
        raise InvalidCursor("not a time") from exc
    return created, row_id


def encode_seq(kind: str, seq: int) -> str:
    """The cursor after a row of a listing in sequence order."""
    return _encode([kind, seq])


def decode_seq(cursor: str, kind: str) -> int:
    parts = _decode(cursor, kind)
    if len(parts) != 1:
        raise InvalidCursor("wrong shape")
    seq = parts[0]
    # bool is an int to Python; JSON true is not a sequence number.
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise InvalidCursor("wrong value")
    return seq
