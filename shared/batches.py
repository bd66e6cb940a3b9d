"""Batch state. A batch's counts are always derived from its job rows (the
truth); the batch row only holds what jobs cannot: open/closed, completion
time and the callback's delivery state."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from shared.db import affected
from shared.tables import Batch, BatchStatus, Job, JobStatus, utcnow

log = logging.getLogger(__name__)

CALLBACK_PENDING, CALLBACK_DELIVERED, CALLBACK_FAILED = "pending", "delivered", "failed"


def new_batch_id() -> str:
    return str(uuid.uuid4())


def create(session: Session, owner: str, callback_url: str | None) -> Batch:
    batch = Batch(
        id=new_batch_id(),
        owner=owner,
        status=BatchStatus.OPEN,
        total=0,
        created_at=utcnow(),
        callback_url=callback_url,
        callback_attempts=0,
    )
    session.add(batch)
    return batch


def get_for_owner(session: Session, batch_id: str, owner: str) -> Batch | None:
    batch = session.get(Batch, batch_id)
    return batch if batch is not None and batch.owner == owner else None


def discard(session: Session, batch_id: str) -> list[str]:
    """Delete a batch and its jobs; returns the storage keys of their audio to delete."""
    keys = list(session.scalars(select(Job.audio_key).where(Job.batch_id == batch_id)))
    session.execute(delete(Job).where(Job.batch_id == batch_id))
    session.execute(delete(Batch).where(Batch.id == batch_id))
    return keys


def add_to_total(session: Session, batch_id: str, added: int) -> None:
    session.execute(update(Batch).where(Batch.id == batch_id).values(total=Batch.total + added))


def items_page(session: Session, batch_id: str, after_seq: int, limit: int) -> list[Job]:
    """Items in upload order, after the given sequence number."""
    return list(
        session.scalars(
            select(Job)
            .where(Job.batch_id == batch_id, Job.batch_seq > after_seq)
            .order_by(Job.batch_seq)
            .limit(limit)
        )
    )


def encode_cursor(batch: Batch) -> str:
    return f"{batch.created_at.isoformat()}|{batch.id}"


def list_for_owner(session: Session, owner: str, cursor: str | None, limit: int) -> list[Batch]:
    """Newest first; ``cursor`` comes from :func:`encode_cursor` (ValueError if malformed)."""
    query = select(Batch).where(Batch.owner == owner)
    if cursor:
        created_text, last_id = cursor.split("|", 1)
        created = datetime.fromisoformat(created_text)
        query = query.where(
            or_(Batch.created_at < created, and_(Batch.created_at == created, Batch.id < last_id))
        )
    return list(
        session.scalars(query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit))
    )


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


def complete_if_done(session: Session, batch_id: str) -> bool:
    """Mark a closed batch completed once no item is active. True only for the caller
    whose conditional update did it, so exactly one caller sends the callback."""
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
    return affected(result) == 1


def complete_and_notify(
    session: Session, batch_id: str, publish_callback: Callable[[str], None]
) -> bool:
    """Complete the batch if it is done; the caller that completes it queues the callback."""
    if not complete_if_done(session, batch_id):
        return False
    # Commit first: the callback task must find the batch completed when it runs.
    session.commit()
    batch = session.get(Batch, batch_id)
    if batch is not None and batch.callback_url:
        try:
            publish_callback(batch_id)
        except Exception as exc:
            # The sweeper re-queues callbacks left pending.
            log.warning("batch %s: callback not yet queued (%s)", batch_id, exc)
    return True


def lost_callbacks(session: Session, older_than_s: float, limit: int = 100) -> list[str]:
    """Completed batches whose callback was never attempted (its message was lost)."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
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


def close(session: Session, batch_id: str) -> bool:
    """open -> running; True if this call closed it."""
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == BatchStatus.OPEN)
        .values(status=BatchStatus.RUNNING, closed_at=utcnow())
    )
    return affected(result) == 1


def running_batches(session: Session, limit: int = 200) -> list[str]:
    return list(
        session.scalars(select(Batch.id).where(Batch.status == BatchStatus.RUNNING).limit(limit))
    )


def record_callback(session: Session, batch_id: str, state: str) -> None:
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id)
        .values(callback_state=state, callback_attempts=Batch.callback_attempts + 1)
    )
