"""Which model a new job or batch is pinned to (shared.model_registry.resolve), and the
sweeper's failing of work left for a model no worker serves (shared.jobs.fail_unserved),
on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import update

from shared import jobs, model_registry
from shared.config import Settings
from shared.db import session_scope
from shared.tables import Job, ServedModel, utcnow
from tests.shared.test_job_state import make_job

GRACE = 60.0


def register(
    settings: Settings, queue: str, name: str, version: str, *, default: bool, age_s: float = 0
) -> None:
    with session_scope(settings.database_url) as session:
        key = uuid.uuid4().hex
        model_registry.register(
            session,
            model_registry.DIAGNOSIS,
            key,
            {"name": name, "version": version},
            is_default=default,
            queue=queue,
        )
        seen = utcnow() - timedelta(seconds=age_s)
        session.execute(
            update(ServedModel).where(ServedModel.fingerprint == key).values(last_seen_at=seen)
        )


def resolve(settings: Settings, queue: str, wanted: str | None, default: str = "") -> object:
    with session_scope(settings.database_url) as session:
        return model_registry.resolve(session, wanted, queue=queue, grace_s=GRACE, default=default)


def test_a_name_is_its_newest_active_version_and_the_default_is_the_workers_first(
    settings: Settings,
) -> None:
    queue = f"q-{uuid.uuid4().hex[:6]}"
    assert resolve(settings, queue, None) is None  # nothing served yet: no pin
    with pytest.raises(model_registry.ModelNotServed) as nothing:
        resolve(settings, queue, "yamnet")
    assert nothing.value.served == []
    register(settings, queue, "yamnet", "2026.9.1", default=True)
    register(settings, queue, "yamnet", "2026.12.3", default=False)
    register(settings, queue, "yamnet", "2027.1.1", default=False, age_s=2 * GRACE)  # retired
    register(settings, queue, "inception", "1.0", default=False)
    # Another deployment's models (another TUSSIS_QUEUE) are not this one's.
    register(settings, f"{queue}-other", "resnet", "1", default=True)
    assert resolve(settings, queue, "yamnet") == ("yamnet", "2026.12.3")  # numbers compare
    assert resolve(settings, queue, "yamnet@2026.9.1") == ("yamnet", "2026.9.1")
    assert resolve(settings, queue, " inception ") == ("inception", "1.0")
    assert resolve(settings, queue, None) == ("yamnet", "2026.9.1")  # the worker's first
    assert resolve(settings, queue, None, default="inception") == ("inception", "1.0")
    for unknown in ("yamnet@2027.1.1", "resnet", "yamnet@", "@1.0"):
        with pytest.raises(model_registry.ModelNotServed) as refused:
            resolve(settings, queue, unknown)
        assert refused.value.served == [
            "yamnet@2026.12.3",
            "yamnet@2026.9.1",
            "inception@1.0",
        ]
    with pytest.raises(model_registry.ModelNotServed):
        resolve(settings, queue, None, default="resnet")  # a default nobody serves
    # A worker added later for one model alone (first in its own list) does not take
    # the default from the one served longest.
    register(settings, queue, "inception", "1.0", default=True)
    assert resolve(settings, queue, None) == ("yamnet", "2026.9.1")


def test_the_sweeper_fails_work_left_for_a_model_no_worker_serves(settings: Settings) -> None:
    queue = f"q-{uuid.uuid4().hex[:6]}"
    register(settings, queue, "live", "1", default=True)
    register(settings, queue, "gone", "1", default=False, age_s=2 * GRACE)
    waiting, fresh, served, unpinned, running = (make_job(settings) for _ in range(5))
    long_ago = utcnow() - timedelta(seconds=2 * GRACE)
    with session_scope(settings.database_url) as session:
        for job_id, pin in (
            (waiting, "gone"),
            (fresh, "gone"),
            (served, "live"),
            (running, "gone"),
        ):
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(model_id=pin, model_version="1", created_at=long_ago)
            )
        session.execute(update(Job).where(Job.id == unpinned).values(created_at=long_ago))
        # Accepted just now, while the model still counted as served: not yet.
        session.execute(update(Job).where(Job.id == fresh).values(created_at=utcnow()))
        # Claimed by a worker that died (its lease ran out).
        session.execute(
            update(Job)
            .where(Job.id == running)
            .values(status="running", attempts=1, lease_expires_at=long_ago)
        )
    with session_scope(settings.database_url) as session:
        failed = jobs.fail_unserved(session, queue, GRACE)
    assert {f.job_id for f in failed} >= {waiting, running}
    assert not {fresh, served, unpinned} & {f.job_id for f in failed}
    with session_scope(settings.database_url) as session:
        row = session.get(Job, waiting)
        assert row is not None and (row.status, row.error_code) == ("failed", "model_not_served")
        assert "gone 1" in (row.error_message or "") and "live@1" in (row.error_message or "")
        for job_id in (fresh, served, unpinned):
            assert session.get(Job, job_id).status == "queued"  # type: ignore[union-attr]
