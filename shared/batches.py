"""Batch state. A batch's counts are always derived from its job rows (the
truth); the batch row only holds what jobs cannot: open/closed, completion
time and the callback's delivery state."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db import session_scope
from shared.models import Batch, BatchStatus, Job, JobStatus, utcnow
from shared.queue import publish_callback

log = logging.getLogger(__name__)

CALLBACK_PENDING, CALLBACK_DELIVERED, CALLBACK_FAILED = "pending", "delivered", "failed"


def new_batch_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Counts:
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.queued + self.running + self.succeeded + self.failed

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    def as_dict(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "running": self.running,
            "succeeded": self.succeeded,
            "failed": self.failed,
        }


def counts(session: Session, batch_id: str) -> Counts:
    rows = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    ).all()
    return Counts(**{str(status): int(n) for status, n in rows})


def last_finished_at(session: Session, batch_id: str) -> datetime | None:
    return session.scalar(select(func.max(Job.finished_at)).where(Job.batch_id == batch_id))


def existing_items(session: Session, batch_id: str) -> set[tuple[str | None, str]]:
    """(path, sha256) of every item, to refuse re-uploads of the same file."""
    return set(
        session.execute(select(Job.path, Job.audio_sha256).where(Job.batch_id == batch_id)).all()
    )


def next_seq(session: Session, batch_id: str) -> int:
    current = session.scalar(select(func.max(Job.batch_seq)).where(Job.batch_id == batch_id))
    return (current or 0) + 1


def complete_if_done(database_url: str, batch_id: str) -> bool:
    """Mark a closed batch completed once no item is active. True only for the caller
    whose conditional update did it, so exactly one caller sends the callback."""
    with session_scope(database_url) as session:
        active = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.batch_id == batch_id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        )
        if active:
            return False
        batch = session.get(Batch, batch_id)
        if batch is None or batch.status != BatchStatus.RUNNING:
            return False
        result = session.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.status == BatchStatus.RUNNING)
            .values(
                status=BatchStatus.COMPLETED,
                finished_at=last_finished_at(session, batch_id) or utcnow(),
                callback_state=CALLBACK_PENDING if batch.callback_url else None,
            )
        )
        return result.rowcount == 1


def complete_and_notify(app: Any, settings: Settings, batch_id: str) -> bool:
    """Complete the batch if it is done; the caller that completes it queues the callback."""
    if not complete_if_done(settings.database_url, batch_id):
        return False
    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, batch_id)
        has_callback = batch is not None and bool(batch.callback_url)
    if has_callback:
        try:
            publish_callback(app, settings, batch_id)
        except Exception as exc:
            # The sweeper re-queues callbacks left pending.
            log.warning("batch %s: callback not yet queued (%s)", batch_id, exc)
    return True


def lost_callbacks(database_url: str, older_than_s: float, limit: int = 100) -> list[str]:
    """Completed batches whose callback was never attempted (its message was lost)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with session_scope(database_url) as session:
        return list(
            session.scalars(
                select(Batch.id)
                .where(
                    Batch.status == BatchStatus.COMPLETED,
                    Batch.callback_state == CALLBACK_PENDING,
                    Batch.callback_attempts == 0,
                    Batch.finished_at < cutoff,
                )
                .limit(limit)
            )
        )


def close(database_url: str, batch_id: str) -> bool:
    """open -> running; True if this call closed it."""
    with session_scope(database_url) as session:
        result = session.execute(
            update(Batch)
            .where(Batch.id == batch_id, Batch.status == BatchStatus.OPEN)
            .values(status=BatchStatus.RUNNING, closed_at=utcnow())
        )
        return result.rowcount == 1


def running_batches(database_url: str, limit: int = 200) -> list[str]:
    with session_scope(database_url) as session:
        return list(
            session.scalars(
                select(Batch.id).where(Batch.status == BatchStatus.RUNNING).limit(limit)
            )
        )


def record_callback(database_url: str, batch_id: str, state: str) -> None:
    with session_scope(database_url) as session:
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(callback_state=state, callback_attempts=Batch.callback_attempts + 1)
        )
