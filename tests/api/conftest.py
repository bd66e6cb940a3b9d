"""Helpers shared by the API tests."""

from __future__ import annotations

from typing import Any


def assert_error(response: Any, status: int, code: str) -> None:
    """The one error shape: an HTTP status, a stable code and a sentence."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body["error"]) >= {"code", "message", "status"}
    assert body["error"]["code"] == code
    assert body["error"]["status"] == status
    assert len(body["error"]["message"]) > 10 and body["error"]["message"].endswith(".")
