"""What a poll reads, in one statement: the caller's API key and the job, the batch
with its counts, or a page of a batch's items, with only the columns the answer needs.

A poll is the most frequent request a client makes. Checking the key in a statement of
its own, then reading the row in another, each in its own transaction, cost four round
trips and a pool pre-ping; here it is one (``shared.db.read_once``: autocommit, no
``BEGIN``/``COMMIT``). The key is checked in that same statement, so a revoked key still
fails from its very next request.

``Access`` says who asks: a database key's hash (the statement finds its owner and joins
the row on it), or an owner already known (a bootstrap key, open mode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Row,
    Select,
    and_,
    bindparam,
    case,
    func,
    select,
)
from sqlalchemy.orm import aliased

from shared.batches import Counts
from shared.tables import ApiKey, Batch, Job, JobStatus

# What a job's body shows (api/representation.py job_to_dict), and nothing else: not
# the owner, the audio key, the lease or the worker.
JOB_COLUMNS = (
    Job.id,
    Job.status,
    Job.attempts,
    Job.filename,
    Job.content_type,
    Job.size_bytes,
    Job.audio_sha256,
    Job.duration_s,
    Job.created_at,
    Job.updated_at,
    Job.started_at,
    Job.finished_at,
    Job.audio_deleted_at,
    Job.diagnosis,
    Job.score,
    Job.threshold,
    Job.model_id,
    Job.model_version,
    Job.cough_detected,
    Job.cough_score,
    Job.cough_segments,
    Job.error_code,
    Job.error_message,
    Job.batch_id,
    Job.path,
    Job.label,
    Job.group,
)
BATCH_COLUMNS = (
    Batch.id,
    Batch.status,
    Batch.created_at,
    Batch.closed_at,
    Batch.finished_at,
    Batch.callback_url,
    Batch.callback_state,
    Batch.callback_attempts,
    Batch.model_id,
    Batch.model_version,
    Batch.rescored_from,
)
_KEY_COLUMNS = (
    ApiKey.owner.label("key_owner"),
    ApiKey.last_used_at.label("key_last_used_at"),
)


@dataclass(frozen=True)
class Access:
    """Who asks: ``key_hash`` of a database key still to be checked, or a known ``owner``."""

    key_hash: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class KeyUse:
    """A database key found active: its owner and when it was last recorded in use."""

    owner: str
    last_used_at: datetime | None


@dataclass(frozen=True)
class Polled:
    """What one poll found. ``key`` is None when the access was by a known owner;
    ``valid`` is False when a database key is unknown or revoked (nothing else was read)."""

    valid: bool
    key: KeyUse | None = None
    rows: list[Any] = field(default_factory=list)


def _keyed(keyed: bool, columns: Sequence[Any], target: Any, on: ColumnElement[bool]) -> Select:
    """``SELECT key columns, columns FROM api_keys LEFT JOIN target ON on AND owner = key's``
    for a database key (``:key_hash``); ``SELECT columns FROM target WHERE on AND owner =
    :owner`` otherwise."""
    if keyed:
        return (
            select(*_KEY_COLUMNS, *columns)
            .select_from(ApiKey)
            .outerjoin(target, and_(on, target.owner == ApiKey.owner))
            .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked.is_(False))
        )
    return select(*columns).select_from(target).where(on, target.owner == bindparam("owner"))


def _run(
    conn: Connection, access: Access, build: Callable[[bool], Select], present: str, **params: Any
) -> Polled:
    keyed = access.key_hash is not None
    values = {**params, **({"key_hash": access.key_hash} if keyed else {"owner": access.owner})}
    # The statements are built once per process (they only take parameters), so a poll
    # spends nothing on building SQL.
    rows = list(conn.execute(build(keyed), values).all())
    if not keyed:
        return Polled(True, None, rows)
    if not rows:
        return Polled(False)
    first = rows[0]
    key = KeyUse(first.key_owner, first.key_last_used_at)
    # The outer join gives one row of NULLs when the key is good but the row is not its.
    return Polled(True, key, [r for r in rows if getattr(r, present) is not None])


def _ahead() -> Any:
    """For a queued job, how many jobs were queued before it (its place in the queue);
    NULL for any other (the subquery runs only for a queued one)."""
    earlier = aliased(Job)
    count = (
        select(func.count())
        .select_from(earlier)
        .where(earlier.status == JobStatus.QUEUED, earlier.created_at < Job.created_at)
        .scalar_subquery()
    )
    return case((Job.status == JobStatus.QUEUED, count), else_=None).label("ahead")


@cache
def _job_statement(keyed: bool) -> Select:
    return _keyed(keyed, (*JOB_COLUMNS, _ahead()), Job, Job.id == bindparam("job_id"))


def job(conn: Connection, access: Access, job_id: str) -> Polled:
    """The key and the job (``rows``: none, or the one job row, with ``ahead``)."""
    return _run(conn, access, _job_statement, "id", job_id=job_id)


@cache
def _batch_statement(keyed: bool) -> Select:
    counts = (
        select(
            Job.status.label("item_status"),
            func.count().label("item_count"),
            func.max(Job.finished_at).label("last_finished_at"),
        )
        .where(Job.batch_id == bindparam("batch_id"))
        .group_by(Job.status)
        .subquery()
    )
    return _keyed(
        keyed,
        (*BATCH_COLUMNS, counts.c.item_status, counts.c.item_count, counts.c.last_finished_at),
        Batch,
        Batch.id == bindparam("batch_id"),
    ).outerjoin(counts, Batch.id.is_not(None))


def batch(conn: Connection, access: Access, batch_id: str) -> Polled:
    """The key, the batch and its items' counts by status (``rows``: one per status the
    items are in, each repeating the batch's columns; one with ``item_status`` None for
    a batch without items; none when there is no such batch)."""
    return _run(conn, access, _batch_statement, "id", batch_id=batch_id)


def batch_counts(rows: Sequence[Any]) -> Counts:
    """The items' counts from :func:`batch`'s rows."""
    return Counts.from_rows(
        (r.item_status, r.item_count, r.last_finished_at) for r in rows if r.item_status
    )


@cache
def _items_statement(keyed: bool) -> Select:
    columns = (Batch.id.label("found_batch"), *JOB_COLUMNS, Job.batch_seq)
    return (
        _keyed(keyed, columns, Batch, Batch.id == bindparam("batch_id"))
        .outerjoin(Job, and_(Job.batch_id == Batch.id, Job.batch_seq > bindparam("after_seq")))
        .order_by(Job.batch_seq)
        .limit(bindparam("page_limit"))
    )


def items(conn: Connection, access: Access, batch_id: str, after_seq: int, limit: int) -> Polled:
    """The key, whether the batch is the caller's, and up to ``limit`` of its items after
    ``after_seq`` in upload order (``rows``: none when there is no such batch; else the
    items, or one row with ``id`` None for an empty page)."""
    return _run(
        conn,
        access,
        _items_statement,
        "found_batch",
        batch_id=batch_id,
        after_seq=after_seq,
        page_limit=limit,
    )


def page_items(rows: Sequence[Row[Any]]) -> list[Row[Any]]:
    """The item rows of :func:`items` (without the empty page's placeholder)."""
    return [r for r in rows if r.id is not None]
