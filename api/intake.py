"""Turning accepted audio into stored, queued jobs: shared by single jobs and batches."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from flask import current_app

from shared import jobs
from shared.audio import check_usable, decode
from shared.config import Settings
from shared.db import session_scope
from shared.queue import publish_analysis, publish_chunk
from shared.storage import AudioStorage
from shared.tables import Job

log = logging.getLogger(__name__)


def settings() -> Settings:
    return current_app.extensions["tussis.settings"]


def storage() -> AudioStorage:
    return current_app.extensions["tussis.storage"]


def usable_duration(data: bytes) -> float:
    """Decode and check like the worker will; raises ``AudioError`` with a code."""
    s = settings()
    audio = decode(data, max_seconds=s.max_duration_s + 1)
    check_usable(audio, s.min_duration_s, s.max_duration_s, s.silence_dbfs)
    return audio.duration_s


@dataclass(frozen=True)
class NewJob:
    data: bytes
    filename: str | None
    content_type: str | None
    duration_s: float
    sha256: str
    path: str | None = None
    label: str | None = None


def new_job(
    data: bytes,
    filename: str | None,
    content_type: str | None,
    duration_s: float,
    path: str | None = None,
    label: str | None = None,
) -> NewJob:
    return NewJob(
        data, filename, content_type, duration_s, hashlib.sha256(data).hexdigest(), path, label
    )


def store(owner: str, item: NewJob, batch_id: str | None = None, seq: int | None = None) -> Job:
    """Store the audio, then commit the job row (the worker must always find both)."""
    job_id = jobs.new_job_id()
    storage().put(job_id, item.data)
    with session_scope(settings().database_url) as session:
        job = jobs.create(
            session,
            job_id=job_id,
            owner=owner,
            filename=item.filename,
            content_type=item.content_type,
            size_bytes=len(item.data),
            sha256=item.sha256,
            duration_s=item.duration_s,
            batch_id=batch_id,
            batch_seq=seq,
            path=item.path,
            label=item.label,
        )
    return job


def publish_single(job_id: str) -> None:
    try:
        publish_analysis(current_app.extensions["celery"], settings(), job_id)
    except Exception as exc:
        # The row is committed; the sweeper re-publishes queued jobs left unpublished.
        log.warning(
            "job %s accepted but not yet published (%s); the sweeper will retry", job_id, exc
        )


def publish_chunks(job_ids: Sequence[str]) -> None:
    s = settings()
    size = max(1, s.batch_chunk_size)
    for start in range(0, len(job_ids), size):
        chunk = list(job_ids[start : start + size])
        try:
            publish_chunk(current_app.extensions["celery"], s, chunk)
        except Exception as exc:
            log.warning("batch chunk not yet published (%s); the sweeper will retry", exc)
