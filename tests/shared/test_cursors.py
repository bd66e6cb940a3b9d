"""One cursor format for every listing: opaque, URL-safe, and anything a client
could forge is refused with ``InvalidCursor`` (a ValueError), never let through."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from shared import cursors
from shared.cursors import InvalidCursor


def forge(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_round_trips_and_uses_only_url_safe_characters() -> None:
    created = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    row_id = "330c46b4-f667-433a-a5fb-20bb67131fa9"
    token = cursors.encode_time_id(cursors.KIND_JOBS, created, row_id)
    assert cursors.ALPHABET.fullmatch(token)
    assert cursors.decode_time_id(token, cursors.KIND_JOBS) == (created, row_id)
    seq = cursors.encode_seq(cursors.KIND_ITEMS, 123456)
    assert cursors.ALPHABET.fullmatch(seq)
    assert cursors.decode_seq(seq, cursors.KIND_ITEMS) == 123456


def test_a_cursor_of_one_listing_is_refused_by_another() -> None:
    token = cursors.encode_time_id(cursors.KIND_JOBS, datetime.now(UTC), "abc")
    with pytest.raises(InvalidCursor):
        cursors.decode_time_id(token, cursors.KIND_BATCHES)
    with pytest.raises(InvalidCursor):
        cursors.decode_seq(token, cursors.KIND_ITEMS)


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "100",  # the old items cursor: plain digits
        "٣",  # a non-ASCII digit
        "abc\x00",
        "a+b/c=",  # standard base64, and padding
        "%%%",
        "x" * (cursors.MAX_LENGTH + 4),
        "W10",  # []
        "WyJ4IiwgMV0",  # ["x", 1]
        forge(["jobs", "2026-01-02T03:04:05", "abc"]),  # no time zone
        forge(["jobs", "2026-01-02T03:04:05+00:00"]),  # no id
        forge(["jobs", "2026-13-02T03:04:05+00:00", "abc"]),  # month 13
        forge(["jobs", "0001-01-01T00:00:00+05:00", "abc"]),  # before year 1 in UTC
        forge(["jobs", "٢٠٢٦-01-02T03:04:05+00:00", "abc"]),  # non-ASCII digits
        forge(["jobs", "2026-01-02T03:04:05+00:00", "a\x00b"]),  # NUL in the id
        forge(["jobs", "2026-01-02T03:04:05+00:00", 7]),
        forge({"jobs": 1}),
        base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("="),  # not UTF-8
    ],
)
def test_malformed_time_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        cursors.decode_time_id(cursor, cursors.KIND_JOBS)


@pytest.mark.parametrize(
    "value",
    [["items"], ["items", -1], ["items", 2**31], ["items", True], ["items", "5"], ["items", 1.5]],
)
def test_malformed_sequence_cursors_are_refused(value: list[object]) -> None:
    with pytest.raises(InvalidCursor):
        cursors.decode_seq(forge(value), cursors.KIND_ITEMS)
