"""Every read and write of a job's state.

The ``jobs`` row is the truth; Celery messages only say "look at job X".
Each state change is a conditional UPDATE (compare-and-set), so duplicate or
late deliveries of the same message cannot move a job backwards or run it
twice at once, and a job that keeps killing its worker gives up after
``max_attempts`` with ``failed``/``worker_lost``.
"""

from __future__ import annotations

import enum
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from shared import cursors, model_registry
from shared.db import affected
from shared.tables import TERMINAL_STATUSES, Job, JobStatus, ServedModel, utcnow

_ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def create(
    session: Session,
    *,
    job_id: str,
    owner: str,
    filename: str | None,
    content_type: str | None,
    size_bytes: int,
    sha256: str,
    duration_s: float,
    batch_id: str | None = None,
    batch_seq: int | None = None,
    path: str | None = None,
    label: str | None = None,
    group: str | None = None,
    audio_key: str | None = None,
    recording_id: str | None = None,
    segment: int | None = None,
    model: tuple[str, str] | None = None,
) -> Job:
    """A queued job whose audio is stored under its id (store the audio first), or
    under ``audio_key`` (a long recording's decoding pass and segments)."""
    now = utcnow()
    job = Job(
        id=job_id,
        owner=owner,
        status=JobStatus.QUEUED,
        attempts=0,
        filename=filename[:255] if filename else None,
        content_type=content_type[:127] if content_type else None,
        size_bytes=size_bytes,
        audio_sha256=sha256,
        audio_key=audio_key or job_id,
        duration_s=duration_s,
        created_at=now,
        updated_at=now,
        published_at=now,
        batch_id=batch_id,
        batch_seq=batch_seq,
        path=path,
        label=label,
        group=group,
        recording_id=recording_id,
        segment=segment,
        # The pin: only a worker serving this model takes the job (shared.queue).
        model_id=model[0] if model else None,
        model_version=model[1] if model else None,
    )
    session.add(job)
    return job


def active_count(session: Session, *where: Any) -> int:
    """Jobs matching ``where`` (a batch's items, a recording's work) still queued or running."""
    return int(
        session.scalar(select(func.count()).select_from(Job).where(Job.status.in_(_ACTIVE), *where))
        or 0
    )


def complete_parent(
    session: Session,
    parent: Any,
    parent_id: str,
    children: Any,
    unfinished: Iterable[str],
    values: Callable[[Any], dict[str, Any]],
) -> bool:
    """The one completion of a parent of jobs (a batch, a long recording): once none of
    its ``children`` is active, a conditional UPDATE moves it from an ``unfinished``
    status to what ``values(row)`` says (computed only while it can still complete).
    True only for the caller whose update landed, so exactly one caller follows up
    (queues a callback, writes a recording's events)."""
    if active_count(session, children):
        return False
    open_statuses = list(unfinished)
    row = session.get(parent, parent_id)
    if row is None or row.status not in open_statuses:
        return False
    result = session.execute(
        update(parent)
        .where(parent.id == parent_id, parent.status.in_(open_statuses))
        .values(**values(row))
    )
    return affected(result) == 1


def new_job_id() -> str:
    return str(uuid.uuid4())


def scoring_manifests(
    session: Session, models: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """The bundle manifests of the diagnosis models that scored jobs, by the jobs'
    ``(model_id, model_version)``, from the served-model registry (one query). Where
    a name and version were registered under several fingerprints (a rebuilt bundle),
    the one seen last wins; a model no worker ever registered is absent."""
    wanted = set(models)
    if not wanted:
        return {}
    rows = session.scalars(
        select(ServedModel)
        .where(
            ServedModel.role == model_registry.DIAGNOSIS,
            ServedModel.name.in_({name for name, _ in wanted}),
            ServedModel.version.in_({version for _, version in wanted}),
        )
        .order_by(ServedModel.last_seen_at)
    )
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if (row.name, row.version) in wanted:
            found[(row.name, row.version)] = row.manifest
    return found


def _proc_start_ticks(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # Field 22 (after the parenthesised command name) is the start time.
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_worker_id() -> str:
    """``host:pid:start`` — the start time tells a dead pid from a reused one."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_proc_start_ticks(pid) or '-'}"


def worker_is_dead(worker_id: str | None) -> bool:
    """True only when ``worker_id`` ran on this host and that process is gone."""
    if not worker_id:
        return True
    try:
        host, pid_text, start = worker_id.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False  # cannot see other hosts' processes: trust the lease
    current = _proc_start_ticks(pid)
    if current is not None:
        return start != "-" and current != start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"
    MISSING = "missing"  # deleted by its owner
    TERMINAL = "terminal"  # duplicate delivery of a finished job
    BUSY = "busy"  # a live worker holds it
    GAVE_UP = "gave_up"  # too many attempts died: now failed/worker_lost


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    job: Job | None = None
    attempt: int = 0


def _claimed(worker_id: str, now: datetime, lease_s: float) -> dict[Any, Any]:
    """What a claim writes: running, one attempt more, this worker, a lease."""
    return {
        Job.status: JobStatus.RUNNING,
        Job.attempts: Job.attempts + 1,
        Job.worker: worker_id,
        Job.started_at: now,
        Job.updated_at: now,
        Job.lease_expires_at: now + timedelta(seconds=lease_s),
    }


def claim(
    session: Session,
    job_id: str,
    worker_id: str,
    *,
    max_attempts: int,
    lease_s: float,
    is_dead: Callable[[str | None], bool] = worker_is_dead,
) -> Claim:
    job = session.get(Job, job_id)
    if job is None:
        return Claim(ClaimOutcome.MISSING)
    if job.is_terminal:
        return Claim(ClaimOutcome.TERMINAL, job)
    now = utcnow()
    if (
        job.status == JobStatus.RUNNING
        and job.lease_expires_at is not None
        and job.lease_expires_at > now
        # A claim of this very process is one it no longer works on (a prefork child
        # runs one task at a time): a retry after a lost database connection takes it
        # back at once instead of waiting for the lease to run out.
        and job.worker != worker_id
        and not is_dead(job.worker)
    ):
        return Claim(ClaimOutcome.BUSY, job)
    guard = and_(Job.id == job_id, Job.status == job.status, Job.attempts == job.attempts)
    if job.attempts >= max_attempts:
        session.execute(
            update(Job)
            .where(guard)
            .values(
                status=JobStatus.FAILED,
                finished_at=now,
                updated_at=now,
                lease_expires_at=None,
                error_code="worker_lost",
                error_message=(
                    f"Processing stopped unexpectedly {job.attempts} times "
                    "(the worker process died); giving up on this recording."
                ),
            )
        )
        return Claim(ClaimOutcome.GAVE_UP, job)
    result = session.execute(update(Job).where(guard).values(_claimed(worker_id, now, lease_s)))
    if affected(result) != 1:
        return Claim(ClaimOutcome.BUSY, job)
    session.expire(job)
    job = session.get(Job, job_id)
    return Claim(ClaimOutcome.CLAIMED, job, job.attempts if job else 0)


@dataclass(frozen=True)
class Coalesced:
    """A queued single job claimed together with another's delivery."""

    job_id: str
    attempt: int
    audio_key: str
    model: tuple[str, str] | None = None


def pinned_to(models: Iterable[tuple[str, str]]) -> Any:
    """Jobs pinned to one of ``models`` or to none (scored with a worker's default)."""
    return or_(
        Job.model_id.is_(None),
        *(and_(Job.model_id == name, Job.model_version == version) for name, version in models),
    )


def claim_queued_singles(
    session: Session,
    worker_id: str,
    limit: int,
    *,
    lease_s: float,
    exclude: str,
    models: Iterable[tuple[str, str]] = (),
) -> list[Coalesced]:
    """Claim up to ``limit`` other queued single jobs, oldest first, for one worker's
    chunk: the same conditional claim as :func:`claim` (queued -> running, one more
    attempt, this worker, a lease), for many rows in one statement. On PostgreSQL the
    candidates are locked ``FOR UPDATE SKIP LOCKED``, so workers claiming at once take
    different jobs instead of waiting on each other; SQLite runs one writer at a time,
    and the ``status`` condition lets each job go to one claimer only. Only jobs never
    tried (``attempts`` 0): a job that was in a chunk whose worker died runs alone.
    Their own messages find them running or finished, and do nothing. Only jobs pinned
    to one of ``models`` (those this worker has loaded) or to none: another model's job
    waits for a worker of its own."""
    if limit <= 0:
        return []
    now = utcnow()
    # The candidates in a MATERIALIZED common table expression, so they are chosen
    # once: as a plain ``IN (SELECT ... LIMIT ... SKIP LOCKED)`` PostgreSQL may run the
    # subquery more than once, each run skipping the rows the last one locked (one
    # claim took 4 jobs at a limit of 2). SQLite runs it inside its one write.
    chosen = (
        select(Job.id)
        .where(
            Job.status == JobStatus.QUEUED,
            Job.batch_id.is_(None),
            Job.recording_id.is_(None),  # a long recording's work has its own tasks
            Job.attempts == 0,
            Job.id != exclude,
            pinned_to(models),
        )
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("chosen")
        .prefix_with("MATERIALIZED")
    )
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(select(chosen.c.id)), Job.status == JobStatus.QUEUED)
        .values(_claimed(worker_id, now, lease_s))
        .returning(
            Job.id, Job.attempts, Job.audio_key, Job.created_at, Job.model_id, Job.model_version
        )
        .execution_options(synchronize_session=False)
    ).all()
    ordered = sorted(rows, key=lambda r: (r.created_at, r.id))
    return [
        Coalesced(
            r.id,
            r.attempts,
            r.audio_key,
            (r.model_id, r.model_version) if r.model_id and r.model_version else None,
        )
        for r in ordered
    ]


def _finish(session: Session, job_id: str, worker_id: str, attempt: int, **values: object) -> bool:
    """Write a terminal state if this worker's claim still holds."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status == JobStatus.RUNNING,
            Job.worker == worker_id,
            Job.attempts == attempt,
        )
        .values(finished_at=now, updated_at=now, lease_expires_at=None, **values)
    )
    return affected(result) == 1


def succeed(
    session: Session,
    job_id: str,
    worker_id: str,
    attempt: int,
    *,
    diagnosis: str,
    score: float,
    threshold: float,
    model_id: str,
    model_version: str,
    duration_s: float | None,
    cough_detected: bool | None = None,
    cough_score: float | None = None,
    cough_segments: list[list[float]] | None = None,
    cough_threshold: float | None = None,
    active_share: float | None = None,
    loudness_db: float | None = None,
) -> bool:
    return _finish(
        session,
        job_id,
        worker_id,
        attempt,
        status=JobStatus.SUCCEEDED,
        diagnosis=diagnosis,
        score=score,
        threshold=threshold,
        model_id=model_id,
        model_version=model_version,
        duration_s=duration_s,
        cough_detected=cough_detected,
        cough_score=cough_score,
        cough_segments=cough_segments,
        cough_threshold=cough_threshold,
        active_share=active_share,
        loudness_db=loudness_db,
    )


def succeed_work(
    session: Session, job_id: str, worker_id: str, attempt: int, **columns: object
) -> bool:
    """``succeeded`` with ``columns`` for a job that is no clip analysis (a long
    recording's decoding pass or segment), under the same guard as :func:`succeed`."""
    return _finish(session, job_id, worker_id, attempt, status=JobStatus.SUCCEEDED, **columns)


def fail(
    session: Session,
    job_id: str,
    worker_id: str,
    attempt: int,
    *,
    code: str,
    message: str,
    **details: object,
) -> bool:
    """``details``: extra columns known at failure time (the cough gate's verdict)."""
    return _finish(
        session,
        job_id,
        worker_id,
        attempt,
        status=JobStatus.FAILED,
        error_code=code,
        error_message=message,
        **details,
    )


def renew_leases(session: Session, job_ids: list[str], worker_id: str, lease_s: float) -> int:
    """Extend the leases ``worker_id`` still holds on ``job_ids`` (the heartbeat of a live
    worker); returns how many it holds. A job taken over or finished is left alone."""
    if not job_ids:
        return 0
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id.in_(job_ids),
            Job.status == JobStatus.RUNNING,
            Job.worker == worker_id,
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_s))
    )
    return affected(result)


def fail_timed_out(session: Session, job_ids: list[str], message: str) -> int:
    """``failed``/``timeout`` for those of ``job_ids`` still running, after Celery killed
    their child at the hard time limit (the child could not record it, and its lease
    would otherwise run out and the job be re-published, to time out again)."""
    if not job_ids:
        return 0
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.RUNNING)
        .values(
            status=JobStatus.FAILED,
            finished_at=now,
            updated_at=now,
            lease_expires_at=None,
            error_code="timeout",
            error_message=message,
        )
    )
    return affected(result)


def pins_of(session: Session, job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """The model each of ``job_ids`` is pinned to (those pinned to one)."""
    rows = session.execute(
        select(Job.id, Job.model_id, Job.model_version).where(
            Job.id.in_(job_ids), Job.model_id.is_not(None), Job.recording_id.is_(None)
        )
    ).all()
    return {r.id: (r.model_id, r.model_version) for r in rows if r.model_version}


def any_running(session: Session, job_ids: list[str]) -> bool:
    return bool(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.id.in_(job_ids), Job.status == JobStatus.RUNNING)
        )
    )


# A render asked for longer ago than this is presumed lost (its message, or its worker)
# and may be asked for again.
SPECTROGRAM_PENDING_S = 60.0


def ask_for_spectrogram(session: Session, job_id: str) -> bool:
    """True for the one caller that may queue a render of the job's picture now: none
    is pending (asked for within ``SPECTROGRAM_PENDING_S``). A client asking every
    second while it is drawn queues one render, not one per request."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.spectrogram_asked_at.is_(None),
                Job.spectrogram_asked_at < now - timedelta(seconds=SPECTROGRAM_PENDING_S),
            ),
        )
        .values(spectrogram_asked_at=now)
    )
    return affected(result) == 1


def mark_spectrogram(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(has_spectrogram=True))


# --- API side -----------------------------------------------------------------


def get_for_owner(session: Session, job_id: str, owner: str) -> Job | None:
    """A job of ``owner``'s; a long recording's work rows are no jobs of anyone's."""
    job = session.get(Job, job_id)
    return job if job is not None and job.owner == owner and job.recording_id is None else None


def encode_cursor(job: Job) -> str:
    return cursors.encode_time_id(cursors.KIND_JOBS, job.created_at, job.id)


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Raises ``ValueError`` for anything that is not a cursor this API issued."""
    return cursors.decode_time_id(cursor, cursors.KIND_JOBS)


def list_for_owner(
    session: Session, owner: str, limit: int, cursor: str | None = None
) -> tuple[list[Job], str | None]:
    """Newest first; keyset pagination on (created_at, id) so pages never skip or repeat."""
    query = select(Job).where(Job.owner == owner, Job.recording_id.is_(None))
    if cursor:
        created, job_id = decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id))
        )
    rows = list(
        session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1))
    )
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def delete_job(session: Session, job_id: str) -> bool:
    """True if this call deleted the row (False: a concurrent DELETE got there first)."""
    return affected(session.execute(delete(Job).where(Job.id == job_id))) == 1


# --- Retention ----------------------------------------------------------------------


def _finished_before(
    session: Session, cutoff: datetime, limit: int, *conditions: Any
) -> list[tuple[str, str]]:
    """(id, audio_key) of finished jobs accepted before ``cutoff``, oldest first. A long
    recording's work rows never: the recording's own retention covers its audio."""
    rows = session.execute(
        select(Job.id, Job.audio_key)
        .where(
            Job.created_at < cutoff,
            Job.status.in_(sorted(TERMINAL_STATUSES)),
            Job.recording_id.is_(None),
            *conditions,
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    return [(job_id, key) for job_id, key in rows]


def audio_expired(session: Session, cutoff: datetime, limit: int) -> list[tuple[str, str]]:
    """(id, audio_key) of finished jobs accepted before ``cutoff`` that still have audio.
    Never a queued or running job: its worker still needs the recording."""
    return _finished_before(session, cutoff, limit, Job.audio_deleted_at.is_(None))


def mark_audio_deleted(session: Session, job_ids: list[str], now: datetime) -> int:
    result = session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.audio_deleted_at.is_(None))
        .values(audio_deleted_at=now, has_spectrogram=False)
    )
    return affected(result)


def results_expired(session: Session, cutoff: datetime, limit: int) -> list[tuple[str, str]]:
    """(id, audio_key) of finished single jobs accepted before ``cutoff``. Batch items
    go with their batch (``shared.batches.expired``), so a batch never loses items."""
    return _finished_before(session, cutoff, limit, Job.batch_id.is_(None))


def delete_jobs(session: Session, job_ids: list[str]) -> int:
    return affected(session.execute(delete(Job).where(Job.id.in_(job_ids))))


def audio_keys_in_use(session: Session, keys: list[str]) -> set[str]:
    """Which of ``keys`` some job row still refers to as its audio."""
    # jobs.create stores audio under the job's id, so the primary key answers almost
    # every key; only the few left over are looked up by audio_key (not indexed).
    used = set(session.scalars(select(Job.audio_key).where(Job.id.in_(keys))))
    rest = [key for key in keys if key not in used]
    if rest:
        used |= set(session.scalars(select(Job.audio_key).where(Job.audio_key.in_(rest))))
    return used


# --- Sweeper ----------------------------------------------------------------------


@dataclass(frozen=True)
class Lost:
    job_id: str
    batch_id: str | None
    recording_id: str | None = None
    model: tuple[str, str] | None = None


# A publish time older than any sweep's cut-off: the next sweep publishes the job.
NEVER_PUBLISHED = datetime(2000, 1, 1, tzinfo=UTC)


def mark_unpublished(session: Session, job_ids: list[str]) -> None:
    """The broker refused these jobs' messages: have the next sweep publish them,
    instead of waiting ``TUSSIS_REQUEUE_AFTER`` as for a message that may be lost."""
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED)
        .values(published_at=NEVER_PUBLISHED)
    )


def jobs_to_republish(
    session: Session,
    requeue_after_s: float,
    limit: int = 500,
    *,
    broker_epoch: datetime | None = None,
    republish_gap_s: float | None = None,
) -> list[Lost]:
    """Jobs whose message may be lost: queued and not published for ``requeue_after_s``,
    queued and published before ``broker_epoch`` (into a broker that has since lost its
    messages), or running with an expired lease (its worker or host died with the
    message; live workers renew their leases). ``republish_gap_s`` (default
    ``min(requeue_after_s, 60)``) spaces re-publications of a running job, so one left
    without a worker does not get a message per sweep."""
    now = utcnow()
    stale = now - timedelta(seconds=requeue_after_s)
    if broker_epoch is not None and broker_epoch > stale:
        stale = min(broker_epoch, now)
    gap = min(requeue_after_s, 60) if republish_gap_s is None else republish_gap_s
    candidates = session.execute(
        select(
            Job.id,
            Job.published_at,
            Job.batch_id,
            Job.recording_id,
            Job.model_id,
            Job.model_version,
        )
        .where(
            or_(
                and_(Job.status == JobStatus.QUEUED, Job.published_at < stale),
                and_(
                    Job.status == JobStatus.RUNNING,
                    Job.lease_expires_at < now,
                    Job.published_at < now - timedelta(seconds=gap),
                ),
            )
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    won: list[Lost] = []
    for job_id, published_at, batch_id, recording_id, model_id, version in candidates:
        # Several sweepers may run at once: only the one whose update lands publishes.
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.published_at == published_at)
            .values(published_at=now)
        )
        if affected(result) == 1:
            pin = (model_id, version) if model_id and version and not recording_id else None
            won.append(Lost(job_id, batch_id, recording_id, pin))
    return won


@dataclass(frozen=True)
class Unserved:
    job_id: str
    batch_id: str | None


def fail_unserved(
    session: Session, queue: str | None, grace_s: float, limit: int = 500
) -> list[Unserved]:
    """Fail the jobs waiting for a model no live worker of this deployment has served for
    ``grace_s`` (``TUSSIS_MODEL_GRACE``): queued ones accepted that long ago, and running
    ones whose worker died (lease run out). Without this they would wait forever for a
    worker that was retired. Pinned jobs only: one pinned to no model takes any worker."""
    now = utcnow()
    active = model_registry.active_diagnosis(session, queue, grace_s)
    served = [(r.name, r.version) for r in active]
    waiting = or_(
        and_(Job.status == JobStatus.QUEUED, Job.created_at < now - timedelta(seconds=grace_s)),
        and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now),
    )
    rows = session.execute(
        select(Job.id, Job.batch_id, Job.status, Job.attempts, Job.model_id, Job.model_version)
        .where(
            waiting,
            Job.model_id.is_not(None),
            Job.recording_id.is_(None),
            *(or_(Job.model_id != name, Job.model_version != version) for name, version in served),
        )
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    listed = ", ".join(model_registry.spec(*pin) for pin in served) or "none"
    failed: list[Unserved] = []
    for row in rows:
        message = (
            f"No worker has served the model {row.model_id} {row.model_version} for "
            f"{grace_s:.0f} s (TUSSIS_MODEL_GRACE), so this recording was not analysed. "
            f"Submit it again with a served model (now: {listed}; GET /api/v1/models)."
        )
        result = session.execute(
            update(Job)
            .where(Job.id == row.id, Job.status == row.status, Job.attempts == row.attempts)
            .values(
                status=JobStatus.FAILED,
                finished_at=now,
                updated_at=now,
                lease_expires_at=None,
                error_code="model_not_served",
                error_message=message,
            )
        )
        if affected(result) == 1:
            failed.append(Unserved(row.id, row.batch_id))
    return failed
