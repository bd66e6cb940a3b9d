"""Long polls through real gunicorn (gthread) and a real worker: a waiting client is
answered when the worker commits (Redis pub/sub on PostgreSQL + Redis; the API's look
at the rows on the embedded defaults), and a waiter whose client hangs up frees its
slot at once, not at the end of its wait."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.config import PROJECT_ROOT, normalise_database_url
from tests.conftest import base_settings, migrate, require
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.integration

MODEL = PROJECT_ROOT / "models" / "default"  # the shipped YAMNet bundle: no training
TOKEN = "long-polls-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(params=["embedded", "services"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    require((MODEL / "manifest.json").is_file(), f"no model bundle at {MODEL}")
    if request.param == "embedded":
        settings = base_settings(tmp_path, model_bundle=MODEL, cough_gate_bundle=None)
        migrate(settings.database_url)
    else:
        settings = base_settings(
            tmp_path,
            database_url=normalise_database_url(request.getfixturevalue("postgres_url")),
            broker_url=request.getfixturevalue("redis_url"),
            model_bundle=MODEL,
            cough_gate_bundle=None,
        )
    # A bootstrap key: the suite's shared PostgreSQL database may hold other tests'
    # database keys, which close open mode.
    s = Stack(settings, tmp_path, TUSSIS_API_KEYS=f"long-polls:{TOKEN}")
    yield s
    s.stop()


def waiters(stack: Stack) -> float:
    text = requests.get(f"{stack.url}/metrics", timeout=10).text
    match = re.search(r"^tussis_long_poll_waiters\S* ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_a_long_poll_is_answered_when_a_real_worker_commits(stack: Stack, cough_file: Path) -> None:
    stack.start_api()
    job_id = stack.submit(cough_file.read_bytes(), headers=AUTH).json()["id"]
    answer: dict[str, Any] = {}

    def long_poll() -> None:
        started = time.monotonic()
        response = requests.get(
            f"{stack.url}/api/v1/jobs/{job_id}", headers={"Prefer": "wait=60", **AUTH}, timeout=90
        )
        answer.update(response=response, seconds=time.monotonic() - started)

    client = threading.Thread(target=long_poll)
    client.start()
    # The client waits before any worker exists: only the worker's commit can answer it.
    wait_until(lambda: waiters(stack) == 1, 30, "the long poll to wait")
    stack.start_worker()
    client.join(timeout=120)
    response = answer["response"]
    assert response.status_code == 200
    assert response.json()["status"] == "succeeded", response.json()
    assert response.headers["Preference-Applied"] == "wait=60"
    assert answer["seconds"] < 60  # woken by the result, not by the end of the wait
    assert waiters(stack) == 0


def test_a_waiter_whose_client_hangs_up_frees_its_slot(stack: Stack, cough_file: Path) -> None:
    stack.start_api()  # no worker: the job stays queued, so its long polls wait
    job_id = stack.submit(cough_file.read_bytes(), headers=AUTH).json()["id"]
    request = (
        f"GET /api/v1/jobs/{job_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nPrefer: wait=60\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n"
    ).encode()
    clients = [socket.create_connection(("127.0.0.1", stack.port)) for _ in range(3)]
    for sock in clients:
        sock.sendall(request)
    wait_until(lambda: waiters(stack) == 3, 30, "three long polls to wait")
    for sock in clients:
        sock.close()
    hung_up = time.monotonic()
    wait_until(lambda: waiters(stack) == 0, 20, "the hung-up waiters to leave")
    assert time.monotonic() - hung_up < 60  # long before their waits would have ended
    # The slots are free: a new long poll waits as asked (and ends with the job's state).
    again = requests.get(
        f"{stack.url}/api/v1/jobs/{job_id}", headers={"Prefer": "wait=1", **AUTH}, timeout=30
    )
    assert again.status_code == 200 and again.headers["Preference-Applied"] == "wait=1"
    assert again.json()["status"] == "queued"
