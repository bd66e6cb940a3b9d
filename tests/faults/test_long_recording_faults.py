"""Faults in the middle of a long recording, on PostgreSQL + Redis + an S3 endpoint:
a worker SIGKILLed (parent, children and beat) and Redis restarted empty. Each ends
with exactly the events of an undisturbed run (the same recording counted again
afterwards, and the segments' events computed in-process), each segment's work
recorded once, and a redo costing only the segments that were cut off."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from shared.config import Settings, normalise_database_url
from tests.conftest import migrate
from tests.faults.conftest import fault_settings, kill_group, record, restart_worker
from tests.long_fixtures import LongCase, long_env
from tests.stack import RedisServer, Stack, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

RECOVERY_S = 120.0


@pytest.fixture
def database_url(fresh_postgres_url: str) -> str:
    url = normalise_database_url(fresh_postgres_url)
    migrate(url)
    return url


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def _settings(tmp_path: Path, database_url: str, broker: RedisServer, request: Any) -> Settings:
    # Each segment is held 2 s after its claim, so the fault lands mid-recording.
    return fault_settings(
        tmp_path,
        database_url,
        broker.url,
        drill_task_delay_s=2.0,
        recording_storage_url=request.getfixturevalue("s3_url"),
        s3_endpoint_url=request.getfixturevalue("s3_endpoint"),
    )


def _submit(stack: Stack, data: bytes) -> str:
    response = requests.post(
        f"{stack.url}/api/v1/recordings", files={"audio": ("n.wav", data)}, timeout=120
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _segments(database_url: str, recording_id: str) -> list[Any]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text(
                        "SELECT segment, status, attempts, lease_expires_at, cough_segments "
                        "FROM jobs WHERE recording_id = :r AND segment IS NOT NULL "
                        "ORDER BY segment"
                    ),
                    {"r": recording_id},
                ).all()
            )
    except sa.exc.OperationalError:
        return []
    finally:
        engine.dispose()


def _done(database_url: str, recording_id: str) -> int:
    return sum(r.status in ("succeeded", "failed") for r in _segments(database_url, recording_id))


def _events(stack: Stack, recording_id: str, timeout: float) -> list[dict[str, Any]]:
    def finished() -> dict[str, Any] | None:
        body = requests.get(f"{stack.url}/api/v1/recordings/{recording_id}", timeout=10).json()
        return body if body["status"] in ("succeeded", "failed") else None

    body = wait_until(finished, timeout, "the recording to finish", 0.25)
    assert body["status"] == "succeeded", body
    response = requests.get(
        f"{stack.url}/api/v1/recordings/{recording_id}/events?limit=200", timeout=10
    )
    return list(response.json()["events"])


def _check_once(database_url: str, recording_id: str, max_attempts: int) -> dict[str, int]:
    attempts: dict[str, int] = {}
    for row in _segments(database_url, recording_id):
        assert row.status == "succeeded" and row.lease_expires_at is None, row
        assert 1 <= row.attempts <= max_attempts, row
        attempts[str(row.attempts)] = attempts.get(str(row.attempts), 0) + 1
    return attempts


def _expected(case: LongCase) -> list[dict[str, Any]]:
    return [{"start_s": a, "end_s": b, "score": s} for a, b, s in case.expected]


def test_a_worker_killed_mid_recording_ends_with_the_undisturbed_events(
    tmp_path: Path,
    database_url: str,
    broker: RedisServer,
    long_case: LongCase,
    request: pytest.FixtureRequest,
) -> None:
    settings = _settings(tmp_path, database_url, broker, request)
    stack = Stack(settings, tmp_path, **long_env(settings, long_case))
    try:
        stack.start_api()
        stack.start_worker(concurrency=2)
        disturbed = _submit(stack, long_case.wav)
        wait_until(lambda: _done(database_url, disturbed) >= 2, 120, "two segments done", 0.1)
        done_before = _done(database_url, disturbed)
        kill_group(stack.worker)
        killed = time.monotonic()
        restart_worker(stack, concurrency=2)
        found = _events(stack, disturbed, RECOVERY_S)
        recovery = time.monotonic() - killed
        attempts = _check_once(database_url, disturbed, settings.job_max_attempts)
        assert found == _expected(long_case)
        undisturbed = _submit(stack, long_case.wav)
        assert _events(stack, undisturbed, RECOVERY_S) == found
        assert "2" in attempts  # the segments cut off ran again, once
        record(
            "long_recording_worker_sigkilled",
            segments=len(_segments(database_url, disturbed)),
            done_before_kill=done_before,
            recovery_s=round(recovery, 1),
            attempts=attempts,
            events=len(found),
        )
    finally:
        stack.stop()


def test_a_redis_restart_mid_recording_ends_with_the_undisturbed_events(
    tmp_path: Path,
    database_url: str,
    broker: RedisServer,
    long_case: LongCase,
    request: pytest.FixtureRequest,
) -> None:
    settings = _settings(tmp_path, database_url, broker, request)
    stack = Stack(settings, tmp_path, **long_env(settings, long_case))
    try:
        stack.start_api()
        stack.start_worker(concurrency=2)
        disturbed = _submit(stack, long_case.wav)
        wait_until(lambda: _done(database_url, disturbed) >= 2, 120, "two segments done", 0.1)
        done_before = _done(database_url, disturbed)
        broker.stop()  # nothing persisted: the queued segments' messages are gone
        time.sleep(5)
        broker.start()
        back = time.monotonic()
        found = _events(stack, disturbed, RECOVERY_S)
        recovery = time.monotonic() - back
        assert stack.worker is not None and stack.worker.poll() is None, "the worker exited"
        attempts = _check_once(database_url, disturbed, settings.job_max_attempts)
        assert found == _expected(long_case)
        undisturbed = _submit(stack, long_case.wav)
        assert _events(stack, undisturbed, RECOVERY_S) == found
        record(
            "long_recording_redis_restarted",
            segments=len(_segments(database_url, disturbed)),
            done_before_restart=done_before,
            recovery_s=round(recovery, 1),
            attempts=attempts,
            events=len(found),
        )
    finally:
        stack.stop()
