"""Batch state. A batch's counts are always derived from its job rows (the
truth); the batch row only holds what jobs cannot: open/closed, completion
time and the callback's delivery state."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from shared import cursors, jobs
from shared.db import affected
from shared.tables import Batch, BatchEvaluation, BatchStatus, Job, JobStatus, utcnow

log = logging.getLogger(__name__)

CALLBACK_PENDING, CALLBACK_DELIVERED, CALLBACK_FAILED = "pending", "delivered", "failed"


def new_batch_id() -> str:
    return str(uuid.uuid4())


def create(
    session: Session,
    owner: str,
    callback_url: str | None,
    model: tuple[str, str] | None = None,
    rescored_from: str | None = None,
) -> Batch:
    batch = Batch(
        model_id=model[0] if model else None,
        model_version=model[1] if model else None,
        rescored_from=rescored_from,
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
    return remove(session, batch_id)[0]


def remove(session: Session, batch_id: str) -> tuple[list[str], bool]:
    """:func:`discard`, and whether this call deleted the batch row (False when a
    concurrent DELETE got there first)."""
    keys = list(session.scalars(select(Job.audio_key).where(Job.batch_id == batch_id)))
    session.execute(delete(Job).where(Job.batch_id == batch_id))
    # Also by the foreign key's cascade; explicit, as for the jobs.
    session.execute(delete(BatchEvaluation).where(BatchEvaluation.batch_id == batch_id))
    removed = affected(session.execute(delete(Batch).where(Batch.id == batch_id))) == 1
    return keys, removed


def expired(session: Session, cutoff: datetime, limit: int) -> list[str]:
    """Batches accepted before ``cutoff`` with nothing left to analyse: completed ones,
    and ones left open whose items are all finished (nobody closed them)."""
    active = (
        select(Job.id)
        .where(Job.batch_id == Batch.id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        .exists()
    )
    return list(
        session.scalars(
            select(Batch.id)
            .where(
                Batch.created_at < cutoff,
                or_(
                    Batch.status == BatchStatus.COMPLETED,
                    and_(Batch.status == BatchStatus.OPEN, ~active),
                ),
            )
            .order_by(Batch.created_at)
            .limit(limit)
        )
    )


def rescore_items(session: Session, batch_id: str) -> list[Any]:
    """What rescoring a batch copies of each item, in upload order."""
    return list(
        session.execute(
            select(
                Job.id,
                Job.audio_key,
                Job.audio_deleted_at,
                Job.filename,
                Job.content_type,
                Job.duration_s,
                Job.audio_sha256,
                Job.path,
                Job.label,
                Job.group,
            )
            .where(Job.batch_id == batch_id)
            .order_by(Job.batch_seq)
        ).all()
    )


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


def evaluation_items(session: Session, batch_id: str) -> list[Any]:
    """What evaluating a finished batch needs of each item, in upload order: path,
    status, label, group, score, model id and version, error code, content sha256. Scores and labels
    only (no results' other columns), so that thousands of items are one light query."""
    return list(
        session.execute(
            select(
                Job.path,
                Job.status,
                Job.label,
                Job.group,
                Job.score,
                Job.model_id,
                Job.model_version,
                Job.error_code,
                Job.audio_sha256,
                Job.duration_s,
                Job.active_share,
                Job.loudness_db,
            )
            .where(Job.batch_id == batch_id)
            .order_by(Job.batch_seq)
        ).all()
    )


def encode_cursor(batch: Batch) -> str:
    return cursors.encode_time_id(cursors.KIND_BATCHES, batch.created_at, batch.id)


def encode_item_cursor(job: Any) -> str:
    """From an item (a ``Job``, or a row with its ``batch_seq``)."""
    return cursors.encode_seq(cursors.KIND_ITEMS, job.batch_seq or 0)


def decode_item_cursor(cursor: str | None) -> int:
    """The sequence number to list after (0: from the start); ValueError if malformed."""
    return cursors.decode_seq(cursor, cursors.KIND_ITEMS) if cursor else 0


def list_for_owner(session: Session, owner: str, cursor: str | None, limit: int) -> list[Batch]:
    """Newest first; ``cursor`` comes from :func:`encode_cursor` (ValueError if malformed)."""
    query = select(Batch).where(Batch.owner == owner)
    if cursor:
        created, last_id = cursors.decode_time_id(cursor, cursors.KIND_BATCHES)
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
    # When the latest item so far finished: a running batch's progress is measured to
    # here, so its body changes only when its items do (and its ETag with it).
    last_finished_at: datetime | None = None

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, int, datetime | None]]) -> Counts:
        """From ``(status, count, latest finished_at)`` per status."""
        by_status: dict[str, int] = {}
        last: datetime | None = None
        for status, n, finished in rows:
            by_status[str(status)] = int(n)
            if finished is not None and (last is None or finished > last):
                last = finished
        return cls(**by_status, last_finished_at=last)

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
        select(Job.status, func.count(), func.max(Job.finished_at))
        .where(Job.batch_id == batch_id)
        .group_by(Job.status)
    ).all()
    return Counts.from_rows((status, n, last) for status, n, last in rows)


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
    return jobs.complete_parent(
        session,
        Batch,
        batch_id,
        Job.batch_id == batch_id,
        [BatchStatus.RUNNING],
        lambda batch: {
            "status": BatchStatus.COMPLETED,
            "finished_at": last_finished_at(session, batch_id) or utcnow(),
            "callback_state": CALLBACK_PENDING if batch.callback_url else None,
        },
    )


def complete_and_notify(
    session: Session,
    batch_id: str,
    publish_callback: Callable[[str], None],
    announce: Callable[[str], None] | None = None,
) -> bool:
    """Complete the batch if it is done; the caller that completes it queues the callback
    and announces it (wakes the batch's long polls, shared/notify.py)."""
    if not complete_if_done(session, batch_id):
        return False
    # Commit first: the callback task must find the batch completed when it runs.
    session.commit()
    if announce is not None:
        announce(batch_id)
    batch = session.get(Batch, batch_id)
    if batch is not None and batch.callback_url:
        try:
            publish_callback(batch_id)
        except Exception as exc:
            # The sweeper re-queues callbacks left pending.
            log.warning("batch %s: callback not yet queued (%s)", batch_id, exc)
    return True


def lost_callbacks(session: Session, older_than_s: float, limit: int = 100) -> list[str]:
    """Completed batches whose callback is pending but whose message was lost: never
    attempted although the batch finished long ago, or a retry (or an attempt in
    flight) due long ago. Re-queueing one that is merely late is harmless:
    :func:`claim_callback` lets only one delivery attempt run at a time."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    return list(
        session.scalars(
            select(Batch.id)
            .where(
                Batch.status == BatchStatus.COMPLETED,
                Batch.callback_state == CALLBACK_PENDING,
                or_(
                    Batch.callback_next_attempt_at < cutoff,
                    and_(Batch.callback_next_attempt_at.is_(None), Batch.finished_at < cutoff),
                ),
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


def claim_callback(session: Session, batch_id: str, lease_s: float, early_s: float) -> bool:
    """Claim the next delivery attempt of a pending callback; False if another attempt
    is in flight or the next one is not yet due (more than ``early_s`` ahead, which
    allows for clock skew between workers). The claim moves the due time ``lease_s``
    ahead, so a duplicate message (a late original beside the sweeper's re-queue)
    finds it taken: the conditional update lets exactly one caller through."""
    now = utcnow()
    result = session.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.callback_state == CALLBACK_PENDING,
            or_(
                Batch.callback_next_attempt_at.is_(None),
                Batch.callback_next_attempt_at <= now + timedelta(seconds=early_s),
            ),
        )
        .values(callback_next_attempt_at=now + timedelta(seconds=lease_s))
    )
    return affected(result) == 1


def record_callback(
    session: Session, batch_id: str, state: str, next_attempt_at: datetime | None = None
) -> bool:
    """Count an attempt and its outcome; ``next_attempt_at`` is when the retry is planned
    (the sweeper re-queues the callback if that passes unnoticed). Only a pending
    callback changes, so a late duplicate never overwrites ``delivered``."""
    result = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.callback_state == CALLBACK_PENDING)
        .values(
            callback_state=state,
            callback_attempts=Batch.callback_attempts + 1,
            callback_next_attempt_at=next_attempt_at,
        )
    )
    return affected(result) == 1
