"""Conditional state changes on the job row, on SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared import jobs
from shared.config import Settings
from shared.db import session_scope
from shared.tables import Job

LEASE = 60.0


def make_job(settings: Settings) -> str:
    job_id = jobs.new_job_id()
    with session_scope(settings.database_url) as session:
        jobs.create(
            session,
            job_id=job_id,
            owner="t",
            filename=None,
            content_type=None,
            size_bytes=1,
            sha256="0" * 64,
            duration_s=1.0,
        )
    return job_id


def claim(
    settings: Settings, job_id: str, worker: str, alive: bool = True, max_attempts: int = 3
) -> jobs.Claim:
    with session_scope(settings.database_url) as session:
        return jobs.claim(
            session,
            job_id,
            worker,
            max_attempts=max_attempts,
            lease_s=LEASE,
            is_dead=lambda _w: not alive,
        )


def load(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def test_claim_then_succeed_then_duplicate_delivery_does_nothing(settings: Settings) -> None:
    job_id = make_job(settings)
    first = claim(settings, job_id, "w1")
    assert first.outcome is jobs.ClaimOutcome.CLAIMED and first.attempt == 1
    with session_scope(settings.database_url) as session:
        assert jobs.succeed(
            session,
            job_id,
            "w1",
            1,
            diagnosis="sick",
            score=0.9,
            threshold=0.5,
            model_id="m",
            model_version="1",
            duration_s=1.0,
        )
    again = claim(settings, job_id, "w2")
    assert again.outcome is jobs.ClaimOutcome.TERMINAL
    job = load(settings, job_id)
    assert (job.status, job.attempts, job.diagnosis) == ("succeeded", 1, "sick")


def test_a_live_claim_is_not_stolen_and_a_stale_writer_cannot_finish(settings: Settings) -> None:
    job_id = make_job(settings)
    assert claim(settings, job_id, "w1").outcome is jobs.ClaimOutcome.CLAIMED
    assert claim(settings, job_id, "w2", alive=True).outcome is jobs.ClaimOutcome.BUSY
    # w1 died: w2 takes over; w1's late write (if it ever comes) is refused.
    taken = claim(settings, job_id, "w2", alive=False)
    assert taken.outcome is jobs.ClaimOutcome.CLAIMED and taken.attempt == 2
    with session_scope(settings.database_url) as session:
        assert not jobs.fail(session, job_id, "w1", 1, code="x", message="late")
    with session_scope(settings.database_url) as session:
        assert jobs.fail(session, job_id, "w2", 2, code="silent_audio", message="m")
    job = load(settings, job_id)
    assert (job.status, job.error_code) == ("failed", "silent_audio")


def test_gives_up_after_max_attempts_with_worker_lost(settings: Settings) -> None:
    job_id = make_job(settings)
    for attempt in (1, 2):
        c = claim(settings, job_id, f"w{attempt}", alive=False, max_attempts=2)
        assert c.outcome is jobs.ClaimOutcome.CLAIMED and c.attempt == attempt
    assert claim(settings, job_id, "w3", alive=False, max_attempts=2).outcome is (
        jobs.ClaimOutcome.GAVE_UP
    )
    job = load(settings, job_id)
    assert (job.status, job.error_code, job.attempts) == ("failed", "worker_lost", 2)
    assert claim(settings, job_id, "w4", alive=False).outcome is jobs.ClaimOutcome.TERMINAL


def test_deleted_job_is_missing(settings: Settings) -> None:
    assert claim(settings, jobs.new_job_id(), "w").outcome is jobs.ClaimOutcome.MISSING


def test_cursor_round_trip_and_rejects_garbage(settings: Settings) -> None:
    job = load(settings, make_job(settings))
    assert jobs.decode_cursor(jobs.encode_cursor(job)) == (job.created_at, job.id)
    for bad in ("", "abc", "W10", "WyJ4IiwgMV0"):
        with pytest.raises(ValueError):
            jobs.decode_cursor(bad)


def test_worker_liveness_uses_pid_and_start_time() -> None:
    me = jobs.this_worker_id()
    assert not jobs.worker_is_dead(me)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    host, _pid, start = me.rsplit(":", 2)
    assert jobs.worker_is_dead(f"{host}:{proc.pid}:{start}")
    assert jobs.worker_is_dead(f"{host}:{me.rsplit(':', 2)[1]}:1")  # same pid, other process
    assert not jobs.worker_is_dead(f"some-other-host:{proc.pid}:1")  # cannot tell: trust lease
