"""Long-recording state. The ``recordings`` row holds what the recording is and, once
done, its result; its work lives in job rows (``Job.recording_id``), claimed, leased,
swept and retried exactly like any job (``shared.jobs``):

- one **decoding pass** (``segment`` null), queued when the upload is accepted: it
  finds or writes the 16 kHz PCM and adds the segment rows in the same transaction
  as its own success, so segments exist exactly when the pass succeeded;
- one row per **segment** ``k`` (windows ``[k*N, (k+1)*N)``), whose ``cough_segments``
  column keeps the segment's events ``[start_s, end_s, score, first_window,
  last_window]`` and ``score`` its best window.

When no work row is active, :func:`complete_if_done` runs the same compare-and-set
completion as a batch's (``shared.jobs.complete_parent``): the caller whose update
lands writes the merged events and the result, once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from shared import cursors, jobs
from shared.db import affected
from shared.tables import (
    TERMINAL_STATUSES,
    Job,
    JobStatus,
    Recording,
    RecordingEvent,
    Upload,
    utcnow,
)

KIND_RECORDING = "recording"  # for DELETE tombstones
_UNFINISHED = (JobStatus.QUEUED, JobStatus.RUNNING)


def new_id() -> str:
    return str(uuid.uuid4())


def audio_key(recording_id: str) -> str:
    """Where a POSTed recording's bytes are stored."""
    return f"rec-{recording_id}.audio"


def pcm_key(recording_id: str) -> str:
    """Where a recording's decoding pass writes its 16 kHz PCM."""
    return f"rec-{recording_id}.pcm"


def timeline_key(recording_id: str) -> str:
    """Where the worker keeps a counted recording's timeline (PNG), kept as long as its
    result (the audio retention leaves it)."""
    return f"rec-{recording_id}.timeline.png"


def upload_part_key(upload_id: str, offset: int) -> str:
    """Where the bytes of a resumable upload that arrived from ``offset`` are stored."""
    return f"up-{upload_id}.{offset:012d}"


def owner_of_key(key: str) -> tuple[str, str] | None:
    """("recording" | "upload", id) of a key in the recording store."""
    for prefix, kind in (("rec-", "recording"), ("up-", "upload")):
        if key.startswith(prefix):
            return kind, key[len(prefix) :].split(".", 1)[0]
    return None


def create(
    session: Session,
    *,
    recording_id: str,
    owner: str,
    filename: str | None,
    content_type: str | None,
    size_bytes: int,
    sha256: str,
    audio_parts: list[list[Any]],
    duration_s: float | None,
    label: str | None,
    recorded_at: datetime | None,
) -> str:
    """A queued recording and its decoding pass; returns the pass's job id (to publish)."""
    now = utcnow()
    session.add(
        Recording(
            id=recording_id,
            owner=owner,
            status=JobStatus.QUEUED,
            label=label,
            recorded_at=recorded_at,
            filename=filename,
            content_type=content_type,
            size_bytes=size_bytes,
            audio_sha256=sha256,
            audio_parts=audio_parts,
            duration_s=duration_s,
            segments_total=0,
            created_at=now,
            updated_at=now,
        )
    )
    session.flush()  # the job row refers to it
    job_id = jobs.new_job_id()
    jobs.create(
        session,
        job_id=job_id,
        owner=owner,
        filename=None,
        content_type=None,
        size_bytes=size_bytes,
        sha256=sha256,
        duration_s=duration_s or 0.0,
        audio_key=str(audio_parts[0][0]),
        recording_id=recording_id,
    )
    return job_id


def get_for_owner(session: Session, recording_id: str, owner: str) -> Recording | None:
    row = session.get(Recording, recording_id)
    return row if row is not None and row.owner == owner else None


def encode_cursor(row: Recording) -> str:
    return cursors.encode_time_id(cursors.KIND_RECORDINGS, row.created_at, row.id)


def list_for_owner(session: Session, owner: str, cursor: str | None, limit: int) -> list[Recording]:
    """Newest first; ``cursor`` from :func:`encode_cursor` (ValueError if malformed)."""
    query = select(Recording).where(Recording.owner == owner)
    if cursor:
        created, last_id = cursors.decode_time_id(cursor, cursors.KIND_RECORDINGS)
        query = query.where(
            or_(
                Recording.created_at < created,
                and_(Recording.created_at == created, Recording.id < last_id),
            )
        )
    return list(
        session.scalars(
            query.order_by(Recording.created_at.desc(), Recording.id.desc()).limit(limit)
        )
    )


def pcm_parts(row: Recording) -> list[list[Any]]:
    """What the recording's PCM is read from: its transcode (``pcm_key``), or, when the
    upload already was 16 kHz mono 16-bit WAV (no ``pcm_key``), the upload's parts."""
    if row.pcm_key:
        size = (row.pcm_offset or 0) + 2 * int(row.samples or 0)
        return [[row.pcm_key, size]]
    return [list(part) for part in row.audio_parts]


def stored_keys(row: Recording) -> list[str]:
    """The keys of the recording's audio: its upload's parts and its PCM."""
    keys = [str(key) for key, _ in row.audio_parts]
    if row.pcm_key and row.pcm_key not in keys:
        keys.append(row.pcm_key)
    return keys


def remove(session: Session, recording_id: str) -> tuple[list[str], bool]:
    """Delete a recording with its work rows and events; returns its storage keys, and
    whether this call deleted the row (False when a concurrent DELETE got there first)."""
    row = session.get(Recording, recording_id)
    keys = [*stored_keys(row), timeline_key(recording_id)] if row is not None else []
    # Explicitly (SQLite enforces the cascade only with its foreign_keys pragma on).
    session.execute(delete(Job).where(Job.recording_id == recording_id))
    session.execute(delete(RecordingEvent).where(RecordingEvent.recording_id == recording_id))
    session.execute(delete(Upload).where(Upload.recording_id == recording_id))
    removed = affected(session.execute(delete(Recording).where(Recording.id == recording_id)))
    return keys, removed == 1


@dataclass(frozen=True)
class Progress:
    segments_done: int
    segments_total: int


def progress(session: Session, recording_id: str) -> Progress:
    rows = session.execute(
        select(Job.status, func.count())
        .where(Job.recording_id == recording_id, Job.segment.is_not(None))
        .group_by(Job.status)
    ).all()
    done = sum(int(n) for status, n in rows if status in TERMINAL_STATUSES)
    return Progress(done, sum(int(n) for _, n in rows))


# --- the worker's side ------------------------------------------------------------------


def mark_running(session: Session, recording_id: str) -> None:
    """queued -> running, when its decoding pass is claimed."""
    session.execute(
        update(Recording)
        .where(Recording.id == recording_id, Recording.status == JobStatus.QUEUED)
        .values(status=JobStatus.RUNNING, updated_at=utcnow())
    )


def add_segments(
    session: Session,
    recording: Recording,
    *,
    pcm_key: str | None,
    pcm_offset: int,
    samples: int,
    windows: int,
    windows_per_segment: int,
) -> list[str]:
    """Record the PCM (``pcm_key`` None: the upload's own parts, see :func:`pcm_parts`)
    and add one queued job per segment; returns their ids. Call in the transaction that
    records the decoding pass's success."""
    per = max(1, windows_per_segment)
    count = max(1, -(-windows // per))
    duration_s = samples / 16000
    session.execute(
        update(Recording)
        .where(Recording.id == recording.id)
        .values(
            pcm_key=pcm_key,
            pcm_offset=pcm_offset,
            samples=samples,
            duration_s=duration_s,
            segments_total=count,
            updated_at=utcnow(),
        )
    )
    ids = []
    for k in range(count):
        job_id = jobs.new_job_id()
        jobs.create(
            session,
            job_id=job_id,
            owner=recording.owner,
            filename=None,
            content_type=None,
            size_bytes=0,
            sha256=recording.audio_sha256,
            duration_s=min(per, windows - k * per) * 0.48,
            audio_key=pcm_key or str(recording.audio_parts[0][0]),
            recording_id=recording.id,
            segment=k,
        )
        ids.append(job_id)
    return ids


def work_rows(session: Session, recording_id: str) -> list[Job]:
    """The decoding pass and every segment, segments in order."""
    return list(
        session.scalars(
            select(Job)
            .where(Job.recording_id == recording_id)
            .order_by(Job.segment.is_not(None), Job.segment)
        )
    )


@dataclass
class Outcome:
    """What a finished recording comes to: a result and its events, or an error."""

    result: dict[str, Any] | None = None
    events: list[tuple[float, float, float]] = field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None


def complete_if_done(
    session: Session, recording_id: str, summarise: Callable[[Recording, list[Job]], Outcome]
) -> bool:
    """Finish the recording once none of its work is active (``jobs.complete_parent``,
    as for batches): ``summarise`` merges its segments' events; the caller whose update
    lands writes the events in the same transaction. True for that caller only."""
    outcome: list[Outcome] = []

    def values(row: Recording) -> dict[str, Any]:
        done = summarise(row, work_rows(session, recording_id))
        outcome.append(done)
        failed = done.error_code is not None
        return {
            "status": JobStatus.FAILED if failed else JobStatus.SUCCEEDED,
            "result": None if failed else done.result,
            "error_code": done.error_code,
            "error_message": done.error_message,
            "finished_at": utcnow(),
            "updated_at": utcnow(),
        }

    won = jobs.complete_parent(
        session, Recording, recording_id, Job.recording_id == recording_id, _UNFINISHED, values
    )
    if won and outcome and outcome[0].error_code is None:
        session.add_all(
            RecordingEvent(recording_id=recording_id, seq=i, start_s=a, end_s=b, score=s)
            for i, (a, b, s) in enumerate(outcome[0].events, start=1)
        )
    return won


def unfinished(session: Session, limit: int = 200) -> list[str]:
    """Recordings not yet finished (the sweeper completes any whose completion was missed)."""
    return list(
        session.scalars(select(Recording.id).where(Recording.status.in_(_UNFINISHED)).limit(limit))
    )


# --- events -----------------------------------------------------------------------------


def encode_event_cursor(seq: int) -> str:
    return cursors.encode_seq(cursors.KIND_EVENTS, seq)


def decode_event_cursor(cursor: str | None) -> int:
    return cursors.decode_seq(cursor, cursors.KIND_EVENTS) if cursor else 0


def events_page(
    session: Session, recording_id: str, after_seq: int, limit: int
) -> list[RecordingEvent]:
    return list(
        session.scalars(
            select(RecordingEvent)
            .where(RecordingEvent.recording_id == recording_id, RecordingEvent.seq > after_seq)
            .order_by(RecordingEvent.seq)
            .limit(limit)
        )
    )


def iter_events(session_factory: Any, recording_id: str, page: int = 1000) -> Iterator[Any]:
    """Every event in order, a page per short transaction (for the CSV)."""
    after = 0
    while True:
        with session_factory() as session:
            rows = events_page(session, recording_id, after, page)
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1].seq


# --- retention --------------------------------------------------------------------------


def audio_expired(session: Session, cutoff: datetime, limit: int) -> list[Recording]:
    """Finished recordings accepted before ``cutoff`` that still have their audio."""
    return list(
        session.scalars(
            select(Recording)
            .where(
                Recording.created_at < cutoff,
                Recording.status.in_(sorted(TERMINAL_STATUSES)),
                Recording.audio_deleted_at.is_(None),
            )
            .order_by(Recording.created_at)
            .limit(limit)
        )
    )


def mark_audio_deleted(session: Session, recording_ids: list[str], now: datetime) -> int:
    return affected(
        session.execute(
            update(Recording)
            .where(Recording.id.in_(recording_ids), Recording.audio_deleted_at.is_(None))
            .values(audio_deleted_at=now)
        )
    )


def results_expired(session: Session, cutoff: datetime, limit: int) -> list[str]:
    return list(
        session.scalars(
            select(Recording.id)
            .where(
                Recording.created_at < cutoff,
                Recording.status.in_(sorted(TERMINAL_STATUSES)),
            )
            .order_by(Recording.created_at)
            .limit(limit)
        )
    )


def keys_in_use(session: Session, keys: list[str]) -> set[str]:
    """Which of ``keys`` (recording store) a recording or an upload still refers to."""
    owners = {key: owner_of_key(key) for key in keys}
    recording_ids = {o[1] for o in owners.values() if o and o[0] == "recording"}
    upload_ids = {o[1] for o in owners.values() if o and o[0] == "upload"}
    live: set[str] = set()
    if recording_ids:
        for row in session.scalars(select(Recording).where(Recording.id.in_(recording_ids))):
            live.add(timeline_key(row.id))
            if row.audio_deleted_at is None:
                live.update(stored_keys(row))
    if upload_ids:
        for parts in session.scalars(select(Upload.parts).where(Upload.id.in_(upload_ids))):
            live.update(str(key) for key, _ in parts)
        # An upload's parts become its recording's audio: the recording keeps them.
        for row in session.scalars(
            select(Recording).where(
                Recording.id.in_(select(Upload.recording_id).where(Upload.id.in_(upload_ids)))
            )
        ):
            live.update(stored_keys(row))
    # Parts of uploads that finished into a recording whose upload row is gone.
    return {key for key in keys if key in live}


def uploads_expired(session: Session, cutoff: datetime, limit: int) -> list[Upload]:
    """Unfinished resumable uploads with no byte since ``cutoff``."""
    return list(
        session.scalars(
            select(Upload)
            .where(Upload.updated_at < cutoff, Upload.recording_id.is_(None))
            .order_by(Upload.updated_at)
            .limit(limit)
        )
    )


def forget_upload(session: Session, upload_id: str, cutoff: datetime) -> bool:
    """Delete an unfinished upload idle since before ``cutoff``; False if a byte arrived
    meanwhile (the conditional delete leaves an upload being resumed alone)."""
    result = session.execute(
        delete(Upload).where(
            Upload.id == upload_id, Upload.recording_id.is_(None), Upload.updated_at < cutoff
        )
    )
    return affected(result) == 1
