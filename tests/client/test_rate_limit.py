"""The client waits out a 429 on reads, as the API's Retry-After says."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import base_settings, migrate
from tests.stack import Stack
from tussis.client import Client
from tussis.errors import RequestRefused


def test_reads_over_the_rate_limit_wait_and_succeed(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, rate_limit="3/second")
    migrate(settings.database_url)
    stack = Stack(settings, tmp_path)
    stack.start_api()
    try:
        client = Client(stack.url)
        started = time.monotonic()
        for _ in range(8):  # more than the limit allows in one second, from one caller
            client.request("GET", "/api/v1/batches")
        assert time.monotonic() - started >= 1.0  # it did wait
        # An upload is not sent twice: the 429 reaches the caller.
        with pytest.raises(RequestRefused) as refused:
            for _ in range(8):
                client.request("POST", "/api/v1/batches", files={"files": ("a.mp3", b"x")})
        assert refused.value.code == "rate_limited"
    finally:
        stack.stop()
