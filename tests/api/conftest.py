"""Helpers shared by the API tests."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from shared.config import Settings


def assert_error(response: Any, status: int, code: str) -> None:
    """The one error shape: an HTTP status, a stable code and a sentence."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body["error"]) >= {"code", "message", "status"}
    assert body["error"]["code"] == code
    assert body["error"]["status"] == status
    assert len(body["error"]["message"]) > 10 and body["error"]["message"].endswith(".")


def count(settings: Settings, sql: str, **params: object) -> int:
    """One number from the test's database (a ``SELECT count(*) ...``)."""
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(sql), params).scalar_one())
    finally:
        engine.dispose()


def blobs(settings: Settings) -> int:
    """Audio blobs stored in the database (storage_url=database)."""
    return count(settings, "SELECT count(*) FROM audio_blobs")
