"""How long health data is kept, and the deletions a client asked for.

:func:`purge` is the periodic retention pass (``tussis.retention``, scheduled by
beat). It works in bounded passes of :data:`BATCH` rows and commits after each,
so it never holds a large result or a long transaction, and a crash or a time
limit loses nothing: the next run carries on where this one stopped. Every step
is idempotent, so two runs at once are harmless.

- **Audio** (``TUSSIS_AUDIO_RETENTION``): the recording and the spectrogram of a
  finished job accepted longer ago are deleted, and the row is marked
  (``audio_deleted_at``); the result stays readable. A queued or running job keeps
  its audio whatever its age, so every accepted job still ends in exactly one
  terminal state.
- **Results** (``TUSSIS_RESULT_RETENTION``, off by default): finished single jobs
  and finished batches (with their items) accepted longer ago are deleted, with
  any audio they still have.
- **Tombstones** (``deletions``) are kept as long as results, or
  :data:`TOMBSTONE_RETENTION` when results are kept forever: a tombstone holds only
  an id and an owner, and after it is gone a repeated ``DELETE`` answers ``404``.
- **Idempotency keys** are deleted once they expire.
- **Long recordings** (in their own store, ``TUSSIS_RECORDING_STORAGE_URL``) follow
  the same two periods: their audio and PCM go after the audio retention (the
  result and events stay), the whole recording after the result retention; an
  unfinished resumable upload goes ``TUSSIS_UPLOAD_RETENTION`` after its last byte.
- **Orphans**: stored audio or spectrograms that no job row refers to, written
  more than :data:`ORPHAN_GRACE` ago. The API stores audio before it commits the
  job row, a failed upload or a failed storage delete leaves such files behind, and
  so does a worker that stored a spectrogram for a job deleted while it ran.

The tombstone helpers make ``DELETE`` idempotent: the row goes, and a tombstone
(id, kind, owner) is written in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from itertools import islice

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared import batches, jobs, recordings
from shared.config import Settings
from shared.db import affected, session_scope
from shared.storage import AudioStorage, audio_key_of, spectrogram_key
from shared.tables import Deletion, IdempotencyKey

log = logging.getLogger(__name__)

# Rows (or storage keys) handled per pass, each pass in its own transaction.
BATCH = 500
# The API stores the audio, then commits the job row a moment later: only a key
# this old with no row is certainly an orphan, not an upload in progress.
ORPHAN_GRACE = timedelta(days=1)
# How long a DELETE's tombstone answers a repeated DELETE when results are kept forever.
TOMBSTONE_RETENTION = timedelta(days=30)

KIND_JOB, KIND_BATCH = "job", "batch"


@dataclass(frozen=True)
class Report:
    """What one :func:`purge` deleted."""

    audio_deleted: int = 0  # jobs whose audio and spectrogram were deleted
    jobs_deleted: int = 0  # single jobs past the result retention
    batches_deleted: int = 0  # batches (with all their items) past the result retention
    tombstones_deleted: int = 0
    idempotency_keys_deleted: int = 0
    orphans_deleted: int = 0  # stored keys with no job row
    recording_audio_deleted: int = 0  # long recordings whose audio and PCM were deleted
    recordings_deleted: int = 0  # long recordings past the result retention
    uploads_deleted: int = 0  # unfinished resumable uploads past TUSSIS_UPLOAD_RETENTION

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def audio_and_spectrograms(audio_keys: list[str]) -> list[str]:
    """Every storage key a job's audio leaves behind."""
    return [k for key in audio_keys for k in (key, spectrogram_key(key))]


# --- DELETE tombstones ------------------------------------------------------------


def record_deletion(
    session: Session, resource_id: str, kind: str, owner: str, now: datetime
) -> None:
    session.add(Deletion(id=resource_id, kind=kind, owner=owner, deleted_at=now))


def was_deleted(session: Session, resource_id: str, kind: str, owner: str) -> bool:
    """True if ``owner`` deleted this job or batch (so a repeated DELETE answers 204)."""
    found = session.scalar(
        select(Deletion.id).where(
            Deletion.id == resource_id, Deletion.kind == kind, Deletion.owner == owner
        )
    )
    return found is not None


# --- The retention pass -----------------------------------------------------------


def purge(
    settings: Settings,
    storage: AudioStorage,
    now: datetime,
    recording_storage: AudioStorage | None = None,
) -> Report:
    """One retention run at time ``now`` (a parameter, so tests control the clock)."""
    url = settings.database_url
    audio = jobs_deleted = batches_deleted = 0
    if settings.audio_retention is not None:
        audio = _purge_audio(url, storage, now - settings.audio_retention, now)
    if settings.result_retention is not None:
        cutoff = now - settings.result_retention
        jobs_deleted = _purge_jobs(url, storage, cutoff)
        batches_deleted = _purge_batches(url, storage, cutoff)
    tombstone_cutoff = now - (settings.result_retention or TOMBSTONE_RETENTION)
    with session_scope(url) as session:
        tombstones = affected(
            session.execute(delete(Deletion).where(Deletion.deleted_at < tombstone_cutoff))
        )
        keys = affected(
            session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < now))
        )
    orphans = _purge_orphans(url, storage, now - ORPHAN_GRACE)
    long: dict[str, int] = {}
    if recording_storage is not None:
        long = _purge_long_recordings(settings, recording_storage, now)
        orphans += long.pop("orphans_deleted")
    return Report(audio, jobs_deleted, batches_deleted, tombstones, keys, orphans, **long)


def _in_passes(
    url: str,
    storage: AudioStorage,
    select_rows: Callable[[Session], list[tuple[str, str]]],
    finish_rows: Callable[[Session, list[str]], int],
) -> int:
    """Select (id, audio_key) rows a pass at a time, delete their audio and
    spectrograms, then finish the rows (mark or delete) in a transaction of its own."""
    done = 0
    while True:
        with session_scope(url) as session:
            rows = select_rows(session)
        if not rows:
            return done
        # Storage first, then the rows: a crash in between leaves the rows as they were,
        # and the next run deletes again (deleting is idempotent). The other order
        # could finish a row whose audio then stays forever.
        storage.delete_many(audio_and_spectrograms([key for _, key in rows]))
        with session_scope(url) as session:
            done += finish_rows(session, [job_id for job_id, _ in rows])
        if len(rows) < BATCH:
            return done


def _purge_audio(url: str, storage: AudioStorage, cutoff: datetime, now: datetime) -> int:
    return _in_passes(
        url,
        storage,
        lambda session: jobs.audio_expired(session, cutoff, BATCH),
        lambda session, ids: jobs.mark_audio_deleted(session, ids, now),
    )


def _purge_jobs(url: str, storage: AudioStorage, cutoff: datetime) -> int:
    return _in_passes(
        url,
        storage,
        lambda session: jobs.results_expired(session, cutoff, BATCH),
        jobs.delete_jobs,
    )


def _purge_batches(url: str, storage: AudioStorage, cutoff: datetime) -> int:
    done = 0
    while True:
        with session_scope(url) as session:
            expired = batches.expired(session, cutoff, BATCH)
        for batch_id in expired:
            # One transaction per batch; its audio goes after the commit, and the
            # orphan pass deletes whatever a failed storage delete leaves behind.
            with session_scope(url) as session:
                keys = batches.discard(session, batch_id)
            storage.delete_many(audio_and_spectrograms(keys))
            done += 1
        if len(expired) < BATCH:
            return done


def _purge_orphans(url: str, storage: AudioStorage, cutoff: datetime) -> int:
    done = 0
    listed = storage.keys_older_than(cutoff)
    while chunk := list(islice(listed, BATCH)):
        with session_scope(url) as session:
            in_use = jobs.audio_keys_in_use(session, sorted({audio_key_of(k) for k in chunk}))
        # Keys of long recordings and uploads (when both stores are one) are theirs.
        orphans = [
            key
            for key in chunk
            if audio_key_of(key) not in in_use and recordings.owner_of_key(key) is None
        ]
        if orphans:
            storage.delete_many(orphans)
            done += len(orphans)
    return done


def _purge_long_recordings(
    settings: Settings, store: AudioStorage, now: datetime
) -> dict[str, int]:
    """The retention of long recordings and resumable uploads, in their own store."""
    url = settings.database_url
    audio = removed = uploads = 0
    if settings.audio_retention is not None:
        cutoff = now - settings.audio_retention
        while True:
            with session_scope(url) as session:
                rows = recordings.audio_expired(session, cutoff, BATCH)
            if not rows:
                break
            # Storage first, then the rows (as for jobs): a crash in between deletes again.
            store.delete_many([k for row in rows for k in recordings.stored_keys(row)])
            with session_scope(url) as session:
                audio += recordings.mark_audio_deleted(session, [r.id for r in rows], now)
            if len(rows) < BATCH:
                break
    if settings.result_retention is not None:
        cutoff = now - settings.result_retention
        while True:
            with session_scope(url) as session:
                ids = recordings.results_expired(session, cutoff, BATCH)
            for recording_id in ids:
                with session_scope(url) as session:
                    keys, _ = recordings.remove(session, recording_id)
                store.delete_many(keys)
                removed += 1
            if len(ids) < BATCH:
                break
    if settings.upload_retention is not None:
        cutoff = now - settings.upload_retention
        while True:
            with session_scope(url) as session:
                stale = recordings.uploads_expired(session, cutoff, BATCH)
                found = [(u.id, [str(k) for k, _ in u.parts]) for u in stale]
            for upload_id, keys in found:
                with session_scope(url) as session:
                    gone = recordings.forget_upload(session, upload_id, cutoff)
                if gone:
                    store.delete_many(keys)
                    uploads += 1
            if len(found) < BATCH:
                break
    orphans = 0
    listed = store.keys_older_than(now - ORPHAN_GRACE)
    while chunk := list(islice(listed, BATCH)):
        with session_scope(url) as session:
            in_use = recordings.keys_in_use(session, chunk)
        lost = [key for key in chunk if key not in in_use]
        if lost:
            store.delete_many(lost)
            orphans += len(lost)
    return {
        "recording_audio_deleted": audio,
        "recordings_deleted": removed,
        "uploads_deleted": uploads,
        "orphans_deleted": orphans,
    }
