"""The storage interface's streamed writes and ranged reads, on the filesystem and on a
real S3 HTTP endpoint (moto's standalone server on loopback)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from shared import storage as storage_module
from shared.storage import AudioNotFound, AudioStorage, make_storage
from shared.tables import utcnow


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> AudioStorage:
    if request.param == "file":
        return make_storage(f"file://{tmp_path / 'store'}", "sqlite://")
    endpoint = request.getfixturevalue("s3_endpoint")
    url = request.getfixturevalue("s3_url")
    return make_storage(url, "sqlite://", endpoint)


def test_a_streamed_write_is_readable_whole_and_by_ranges_once_committed(
    store: AudioStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small parts, so the S3 writer really sends a multipart upload of several parts.
    monkeypatch.setattr(storage_module, "S3_PART_BYTES", 5 * 1024 * 1024)
    data = os.urandom(11 * 1024 * 1024 + 123)
    with store.open_write("rec") as writer:
        for start in range(0, len(data), 700_001):
            writer.write(data[start : start + 700_001])
        assert writer.written == len(data)
        with pytest.raises(AudioNotFound):
            store.size("rec")  # nothing readable before the commit
        writer.commit()
    assert store.size("rec") == len(data)
    assert store.get("rec") == data
    assert store.read_range("rec", 5_000_000, 1000) == data[5_000_000:5_001_000]
    assert store.read_range("rec", len(data) - 10, 100) == data[-10:]
    assert store.read_range("rec", len(data) + 5, 10) == b""
    with pytest.raises(AudioNotFound):
        store.read_range("missing", 0, 10)


def test_an_aborted_or_failed_write_leaves_nothing(store: AudioStorage) -> None:
    with store.open_write("gone") as writer:
        writer.write(b"x" * 1000)
        writer.abort()
    with pytest.raises(RuntimeError), store.open_write("broken") as writer:
        writer.write(os.urandom(9 * 1024 * 1024))  # past one S3 part
        raise RuntimeError("the upload broke")
    for key in ("gone", "broken"):
        with pytest.raises(AudioNotFound):
            store.size(key)
    assert list(store.keys_older_than(utcnow() + timedelta(days=1))) == []


def test_whole_values_keys_and_deletion(store: AudioStorage) -> None:
    store.put_many({"a": b"1", "b": b"22"})
    assert store.get_many(["a", "b", "c"]) == {"a": b"1", "b": b"22"}
    assert sorted(store.keys_older_than(utcnow() + timedelta(minutes=1))) == ["a", "b"]
    assert list(store.keys_older_than(utcnow() - timedelta(hours=1))) == []
    store.delete_many(["a", "b"])
    assert store.get_many(["a", "b"]) == {}
