"""Claiming a whole delivery at once (jobs.claim_many) and reading its audio at once
(storage.get_many), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, update

from shared import jobs
from shared.config import Settings, normalise_database_url
from shared.db import get_engine, session_scope
from shared.storage import _LIST_PAGE, DatabaseStorage, FileStorage, make_storage
from shared.tables import Job, JobStatus, utcnow

LEASE = 60.0
Outcome = jobs.ClaimOutcome


def make_jobs(database_url: str, n: int) -> list[str]:
    ids = [jobs.new_job_id() for _ in range(n)]
    with session_scope(database_url) as session:
        for job_id in ids:
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
    return ids


def claim_many(
    database_url: str,
    ids: list[str],
    worker: str,
    alive: bool = True,
    max_attempts: int = 3,
    dead: tuple[str, ...] = (),
) -> dict[str, jobs.Claim]:
    """As ``worker``; the holders of the rows are all alive or all dead, or dead if named."""
    with session_scope(database_url) as session:
        return jobs.claim_many(
            session,
            ids,
            worker,
            max_attempts=max_attempts,
            lease_s=LEASE,
            is_dead=lambda w: w in dead or not alive,
        )


def rows(database_url: str, ids: list[str]) -> dict[str, Job]:
    with session_scope(database_url) as session:
        return {job.id: job for job in session.query(Job).filter(Job.id.in_(ids))}


@contextmanager
def statements(database_url: str) -> Iterator[list[str]]:
    """The SQL statements sent on ``database_url``'s engine meanwhile, one per round trip."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    engine = get_engine(database_url)
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_every_outcome_of_one_claim_in_one_call(settings: Settings) -> None:
    url = settings.database_url
    fresh, terminal, busy, orphaned, spent = make_jobs(url, 5)
    missing = jobs.new_job_id()
    # terminal: finished; busy: held by a live worker; orphaned: held by a dead one;
    # spent: claimed as often as allowed (2 here) by workers that died.
    assert claim_many(url, [terminal, busy, orphaned], "w0")[terminal].attempt == 1
    with session_scope(url) as session:
        assert jobs.fail(session, terminal, "w0", 1, code="silent_audio", message="m")
    for attempt in (1, 2):
        assert claim_many(url, [spent], f"old{attempt}", alive=False)[spent].attempt == attempt

    chunk = [fresh, terminal, busy, missing, fresh, spent]
    got = claim_many(url, chunk, "w1", max_attempts=2, dead=("old2",))
    assert list(got) == [fresh, terminal, busy, missing, spent]  # in order, duplicates once
    assert {k: c.outcome for k, c in got.items()} == {
        fresh: Outcome.CLAIMED,
        terminal: Outcome.TERMINAL,
        busy: Outcome.BUSY,
        missing: Outcome.MISSING,
        spent: Outcome.GAVE_UP,
    }
    # The claimed row is returned in its new state, readable after the session closed.
    claimed = got[fresh].job
    assert claimed is not None and got[fresh].attempt == 1
    assert (claimed.status, claimed.worker, claimed.attempts) == ("running", "w1", 1)

    taken = claim_many(url, [orphaned, busy], "w2", alive=False)
    assert [(c.outcome, c.attempt) for c in taken.values()] == [(Outcome.CLAIMED, 2)] * 2
    after = rows(url, [fresh, spent, orphaned])
    assert (after[fresh].status, after[fresh].worker) == ("running", "w1")
    assert (after[spent].status, after[spent].error_code) == ("failed", "worker_lost")
    assert (after[orphaned].worker, after[orphaned].attempts) == ("w2", 2)
    assert claim_many(url, [], "w1") == {}


def test_a_chunk_is_claimed_with_one_select_and_one_update(settings: Settings) -> None:
    url = settings.database_url
    ids = make_jobs(url, 16)
    with statements(url) as fresh_chunk:
        got = claim_many(url, ids, "w1")
    assert fresh_chunk == ["SELECT", "UPDATE"]
    # Half of the next chunk was held by a worker that died: two groups, two UPDATEs.
    mixed = ids[8:] + make_jobs(url, 8)
    with statements(url) as mixed_chunk:
        again = claim_many(url, mixed, "w2", alive=False)
    assert mixed_chunk == ["SELECT", "UPDATE", "UPDATE"]
    assert {c.outcome for c in [*got.values(), *again.values()]} == {Outcome.CLAIMED}
    assert [c.attempt for c in again.values()] == [2] * 8 + [1] * 8


def test_the_claim_guard_refuses_a_row_that_changed_after_it_was_read(tmp_path: Path) -> None:
    """Another worker claims a job between this worker's SELECT and its UPDATE: the
    UPDATE's guard (status and attempts as read) finds it changed, so it is BUSY here and
    the rest of the chunk is still claimed. SQLite: its reads take no row locks, so the
    interleaving can be forced from inside the call (``is_dead`` runs between the two)."""
    from tests.conftest import base_settings, migrate

    url = base_settings(tmp_path).database_url
    migrate(url)
    ids = make_jobs(url, 3)
    claim_many(url, ids, "w0")  # w0 holds all three, and is about to be found dead
    stolen = ids[1]

    def w0_is_dead(_worker: str | None) -> bool:
        if rows(url, [stolen])[stolen].worker != "w2":
            taken = claim_many(url, [stolen], "w2", alive=False)[stolen]
            assert taken.outcome is Outcome.CLAIMED
        return True

    with session_scope(url) as session:
        got = jobs.claim_many(session, ids, "w1", max_attempts=3, lease_s=LEASE, is_dead=w0_is_dead)
    assert [got[i].outcome for i in ids] == [Outcome.CLAIMED, Outcome.BUSY, Outcome.CLAIMED]
    assert [r.worker for r in rows(url, ids).values()].count("w2") == 1
    assert rows(url, [stolen])[stolen].attempts == 2


def race(url: str, chunks: dict[str, list[str]]) -> dict[str, set[str]]:
    """Each named worker claims its chunk, all at once; what each one claimed."""
    start = threading.Barrier(len(chunks))

    def worker(name: str) -> set[str]:
        start.wait()
        got = claim_many(url, chunks[name], name, alive=True)
        return {k for k, c in got.items() if c.outcome is Outcome.CLAIMED}

    with ThreadPoolExecutor(len(chunks)) as pool:
        futures = {name: pool.submit(worker, name) for name in chunks}
        return {name: future.result(timeout=30) for name, future in futures.items()}


def test_two_workers_racing_for_overlapping_chunks_claim_each_job_once(
    postgres_url: str,
) -> None:
    url = normalise_database_url(postgres_url)
    for _round in range(25):
        ids = make_jobs(url, 24)
        won = race(url, {"a": ids[:16], "b": ids[8:]})  # 8 jobs in both chunks
        assert not won["a"] & won["b"]
        assert won["a"] | won["b"] == set(ids)
        stored = rows(url, ids)
        for name, claimed in won.items():
            assert {(stored[i].worker, stored[i].attempts) for i in claimed} == {(name, 1)}


def test_an_expired_lease_is_claimed_in_the_same_update_as_its_group(postgres_url: str) -> None:
    url = normalise_database_url(postgres_url)
    ids = make_jobs(url, 4)
    claim_many(url, ids, "w0")
    with session_scope(url) as session:  # w0's host is gone: its leases ran out
        session.execute(
            update(Job)
            .where(Job.id.in_(ids))
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    got = claim_many(url, ids, "w1", alive=True)
    assert [(c.outcome, c.attempt) for c in got.values()] == [(Outcome.CLAIMED, 2)] * 4
    assert {r.status for r in rows(url, ids).values()} == {JobStatus.RUNNING}


@pytest.mark.parametrize("kind", ["database", "file"])
def test_get_many_returns_what_is_stored_and_leaves_out_the_rest(
    settings: Settings, tmp_path: Path, kind: str
) -> None:
    storage = (
        make_storage(settings.storage_url, settings.database_url)
        if kind == "database"
        else FileStorage(tmp_path / "audio")
    )
    keys = [f"k{i}" for i in range(3)]
    for i, key in enumerate(keys):
        storage.put(key, bytes([i]) * 10)
    got = storage.get_many([*keys, "absent", keys[0]])
    assert got == {key: bytes([i]) * 10 for i, key in enumerate(keys)}
    assert storage.get_many([]) == {}


def test_database_get_many_reads_a_chunk_in_one_statement(settings: Settings) -> None:
    storage = DatabaseStorage(settings.database_url)
    keys = [f"blob{i}" for i in range(_LIST_PAGE + 2)]
    for key in keys:
        storage.put(key, key.encode())
    with statements(settings.database_url) as chunk:
        assert storage.get_many(keys[:16]) == {k: k.encode() for k in keys[:16]}
    assert chunk == ["SELECT"]
    # More keys than one statement may bind on SQLite: in slices, nothing lost.
    assert storage.get_many(keys) == {k: k.encode() for k in keys}
