"""The rules the failure suite relies on, checked in-process (fast: part of `make test`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from api import create_app
from shared import jobs
from shared.db import is_unavailable, session_scope
from shared.tables import Job, utcnow
from tests.conftest import base_settings, migrate


def _job(url: str, published_ago_s: float) -> str:
    job_id = jobs.new_job_id()
    with session_scope(url) as session:
        jobs.create(
            session,
            job_id=job_id,
            owner="o",
            filename="a.wav",
            content_type="audio/wav",
            size_bytes=1,
            sha256="0" * 64,
            duration_s=1.0,
        )
        session.flush()
        session.get(Job, job_id).published_at = utcnow() - timedelta(seconds=published_ago_s)  # type: ignore[union-attr]
    return job_id


def test_jobs_published_before_the_broker_came_back_empty_are_republished_at_once(
    tmp_path: Path,
) -> None:
    settings = base_settings(tmp_path)
    migrate(settings.database_url)
    url = settings.database_url
    before, after = _job(url, 30), _job(url, 0)
    epoch = utcnow() - timedelta(seconds=10)
    with session_scope(url) as session:
        assert jobs.jobs_to_republish(session, 600) == []  # not yet due by age
    with session_scope(url) as session:
        lost = [x.job_id for x in jobs.jobs_to_republish(session, 600, broker_epoch=epoch)]
    assert lost == [before]  # `after` was published into the broker as it is now
    with session_scope(url) as session:  # republished once, not at every sweep
        assert jobs.jobs_to_republish(session, 600, broker_epoch=epoch) == []
    assert after


def test_a_live_worker_renews_its_leases_and_a_dead_one_is_swept_within_a_lease(
    tmp_path: Path,
) -> None:
    settings = base_settings(tmp_path)
    migrate(settings.database_url)
    url = settings.database_url
    job_id = _job(url, 120)
    with session_scope(url) as session:
        claim = jobs.claim(
            session, job_id, "h:1:1", max_attempts=3, lease_s=30, is_dead=lambda _: False
        )
    assert claim.outcome is jobs.ClaimOutcome.CLAIMED
    with session_scope(url) as session:
        assert jobs.renew_leases(session, [job_id], "h:1:1", lease_s=30) == 1
        assert jobs.renew_leases(session, [job_id], "someone-else", lease_s=30) == 0
    with session_scope(url) as session:  # lease alive: not swept
        assert jobs.jobs_to_republish(session, 600, republish_gap_s=30) == []
    with session_scope(url) as session:  # no renewal for a lease: the worker is dead
        session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)  # type: ignore[union-attr]
    with session_scope(url) as session:
        lost = jobs.jobs_to_republish(session, 600, republish_gap_s=30)
    assert [x.job_id for x in lost] == [job_id]
    # Another worker waits for the lease; the same process (a retry) takes it back.
    with session_scope(url) as session:
        jobs.renew_leases(session, [job_id], "h:1:1", lease_s=30)
    with session_scope(url) as session:
        busy = jobs.claim(
            session, job_id, "h:2:2", max_attempts=3, lease_s=30, is_dead=lambda _: False
        )
        assert busy.outcome is jobs.ClaimOutcome.BUSY
    with session_scope(url) as session:
        again = jobs.claim(
            session, job_id, "h:1:1", max_attempts=3, lease_s=30, is_dead=lambda _: False
        )
        assert (again.outcome, again.attempt) == (jobs.ClaimOutcome.CLAIMED, 2)


def test_only_unreachable_database_errors_count_as_unavailable() -> None:
    down = OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
    assert is_unavailable(down)
    try:
        try:
            raise down
        except OperationalError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert is_unavailable(wrapped)
    assert not is_unavailable(IntegrityError("INSERT", {}, ValueError("duplicate key")))
    assert not is_unavailable(ValueError("nothing to do with the database"))


@pytest.mark.parametrize("method", ["get", "post"])
def test_the_api_answers_503_database_unavailable_while_the_database_is_down(
    tmp_path: Path, method: str
) -> None:
    settings = base_settings(
        tmp_path,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=2",
    )
    client = create_app(settings).test_client()
    if method == "get":
        response = client.get(f"/api/v1/jobs/{jobs.new_job_id()}")
    else:
        response = client.post("/api/v1/jobs", data={"audio": (b"RIFF", "a.wav")})
    assert response.status_code == 503, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert (error["code"], error["status"]) == ("database_unavailable", 503)
    assert int(response.headers["Retry-After"]) > 0


def test_closing_a_channel_after_its_connection_keeps_the_worker_alive(redis_url: str) -> None:
    """kombu 5.7: a channel closed after its connection's transport was torn down (as
    Celery does after losing Redis) restores its unacked messages through
    ``transport.client.hostname``, which is None by then, and the AttributeError ends
    the worker (https://github.com/celery/kombu/issues/970). The guard skips that."""
    from kombu import Connection

    from worker.lifecycle import guard_kombu_restore_unacked

    def close_late() -> None:
        conn = Connection(redis_url)
        conn.connect()
        channel = conn.channel()
        channel.qos._delivered["held-eta-retry"] = object()  # held, not acknowledged
        conn._do_close_transport()  # what Connection.collect() leaves behind
        channel.close()

    guard_kombu_restore_unacked()
    close_late()  # no AttributeError
