"""Claiming queued single jobs together (shared.jobs.claim_queued_singles), on SQLite
and PostgreSQL: oldest first, never a batch item, a long recording's work, a job
already tried, or another claimer's; two claimers at once never share a job."""

from __future__ import annotations

import threading
import time

from sqlalchemy import update

from shared import batches, jobs, recordings
from shared.config import Settings
from shared.db import session_scope
from shared.tables import Job
from tests.shared.test_job_state import make_job


def test_queued_single_jobs_are_claimed_oldest_first_and_only_once(settings: Settings) -> None:
    # The database may hold other tests' queued jobs: these are the oldest of all.
    own = [make_job(settings) for _ in range(6)]
    with session_scope(settings.database_url) as session:
        batch = batches.create(session, "t", None)
        # A long recording's decoding pass: a queued job row of its own tasks.
        recording_id = recordings.new_id()
        own.insert(1, recordings.create(
            session, recording_id=recording_id, owner="t", filename=None,
            content_type=None, size_bytes=1, sha256="0" * 64,
            audio_parts=[[recordings.audio_key(recording_id), 1]], duration_s=3600.0,
            label=None, recorded_at=None,
        ))  # fmt: skip
        old = jobs.utcnow().replace(year=2001)
        for offset, job_id in enumerate(own):
            values = {"created_at": old.replace(second=offset)}
            session.execute(update(Job).where(Job.id == job_id).values(**values))
        # Never coalesced: the recording's work (own[1]), a batch item, and a job that
        # was tried before.
        session.execute(update(Job).where(Job.id == own[2]).values(batch_id=batch.id))
        session.execute(update(Job).where(Job.id == own[3]).values(attempts=1))
    taken: dict[str, list[jobs.Coalesced]] = {}

    # Room for exactly the three eligible jobs (2 + 1): the database may hold other
    # tests' queued jobs, newer than these, which a larger limit would rightly take.
    def claimer(name: str, limit: int) -> None:
        with session_scope(settings.database_url) as session:
            taken[name] = jobs.claim_queued_singles(
                session, name, limit, lease_s=60, exclude=own[0]
            )
            time.sleep(0.2)  # hold the claim's locks while the other one claims

    threads = [threading.Thread(target=claimer, args=(f"w{i}", 2 - i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [c.job_id for name in ("w0", "w1") for c in taken[name]]
    assert len(claimed) == len(set(claimed)) == 3, taken  # never the same job twice
    assert set(claimed) == set(own[4:])  # the oldest eligible, none of the others
    with session_scope(settings.database_url) as session:
        for name, got in taken.items():
            for c in got:
                row = session.get(Job, c.job_id)
                assert row is not None and row.status == "running" and row.worker == name
                assert row.attempts == c.attempt == 1 and row.lease_expires_at is not None


def test_a_claim_takes_only_jobs_of_the_models_its_worker_serves(settings: Settings) -> None:
    """A child serving models A and B coalesces jobs pinned to A or B (or to none), never
    one pinned to C, which waits for a worker of C's."""
    own = [make_job(settings) for _ in range(5)]
    pins = {own[1]: ("a", "1"), own[2]: ("c", "1"), own[3]: ("b", "2"), own[4]: ("a", "2")}
    with session_scope(settings.database_url) as session:
        # Older than any other test's queued jobs (the database may hold some).
        old = jobs.utcnow().replace(year=1999)
        for offset, job_id in enumerate(own):
            name, version = pins.get(job_id, (None, None))
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(created_at=old.replace(second=offset), model_id=name, model_version=version)
            )
    with session_scope(settings.database_url) as session:
        got = jobs.claim_queued_singles(
            session, "w", 3, lease_s=60, exclude=own[0], models=[("a", "1"), ("b", "2")]
        )
    # own[2] (model c) and own[4] (a version 2, not served) are left; own[0] is excluded.
    assert [(c.job_id, c.model) for c in got][:2] == [
        (own[1], ("a", "1")),
        (own[3], ("b", "2")),
    ]
    assert own[2] not in {c.job_id for c in got} and own[4] not in {c.job_id for c in got}
    with session_scope(settings.database_url) as session:
        assert session.get(Job, own[2]).status == "queued"  # type: ignore[union-attr]
        assert session.get(Job, own[4]).status == "queued"  # type: ignore[union-attr]
        jobs.delete_jobs(session, own)  # none left queued for another test's claims
