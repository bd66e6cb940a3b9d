"""SQL tables. The ``jobs`` row is the single source of truth for a job's state.

Alembic owns the schema (``migrations/``); a test checks these models and the
migrations agree.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names so migrations are the same on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED})


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    filename: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(127))
    size_bytes: Mapped[int] = mapped_column(Integer)
    audio_sha256: Mapped[str] = mapped_column(String(64))
    audio_key: Mapped[str] = mapped_column(String(255))
    duration_s: Mapped[float | None] = mapped_column(Float)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker: Mapped[str | None] = mapped_column(String(255))

    diagnosis: Mapped[str | None] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    model_id: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    cough_detected: Mapped[bool | None] = mapped_column(Boolean)
    cough_score: Mapped[float | None] = mapped_column(Float)
    # The gate's threshold when it judged this recording: cough_score >= it is a cough.
    cough_threshold: Mapped[float | None] = mapped_column(Float)
    # [[start_s, end_s], ...]: where the gate found a cough; on a refusal, the
    # window it scored highest (what it looked at).
    cough_segments: Mapped[list[list[float]] | None] = mapped_column(JSON)
    # A scored clip's trivial features (worker.pipeline), for the evaluation's
    # baselines beside duration_s: they outlive the audio. Share of 32 ms frames
    # within 30 dB of the loudest, and the RMS level in dBFS.
    active_share: Mapped[float | None] = mapped_column(Float)
    loudness_db: Mapped[float | None] = mapped_column(Float)

    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    # Batch items only: the batch, the upload order, the file's relative path, and the
    # label and group (site, device, source) the submitter gave, for evaluation.
    batch_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("batches.id", ondelete="CASCADE")
    )
    batch_seq: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str | None] = mapped_column(String(1024))
    label: Mapped[str | None] = mapped_column(String(255))
    group: Mapped[str | None] = mapped_column(String(255))
    has_spectrogram: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # When a render of its picture was last queued: at most one is pending per job.
    spectrogram_asked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set when retention (or DELETE) removed the audio and spectrogram; the result stays.
    audio_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # A long recording's work items (shared/recordings.py): its one decoding pass
    # (``segment`` null) and its segments (``segment`` = k: windows [k*N, (k+1)*N)).
    # Claimed, leased, swept and completed like any job; never listed as jobs.
    recording_id: Mapped[str | None] = mapped_column(
        String(36), ForeignKey("recordings.id", ondelete="CASCADE")
    )
    segment: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_jobs_recording_status", "recording_id", "status"),
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_audio_retention", "audio_deleted_at", "created_at"),
        Index("ix_jobs_status_published", "status", "published_at"),
        Index("ix_jobs_batch_seq", "batch_id", "batch_seq"),
        Index("ix_jobs_batch_status", "batch_id", "status"),
        # A queued job's position, and the oldest queued single jobs (coalescing).
        Index("ix_jobs_status_created", "status", "created_at"),
        # The completion rate of the last minute (Retry-After).
        Index("ix_jobs_finished_at", "finished_at"),
    )

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class BatchStatus(enum.StrEnum):
    OPEN = "open"  # accepting more parts
    RUNNING = "running"  # closed; items still in progress
    COMPLETED = "completed"  # closed; every item terminal


class Batch(Base):
    """A group of jobs submitted together; its counts are derived from its jobs."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=BatchStatus.OPEN)
    total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    callback_state: Mapped[str | None] = mapped_column(String(16))
    callback_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the next delivery attempt is due; the sweeper re-queues a pending
    # callback whose retry message was lost once this is well past.
    callback_next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The model every item is scored with (name, version), pinned at intake; null for a
    # batch accepted while no worker had registered any model (each item then gets the
    # default of the worker that scores it).
    model_id: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(64))
    # The batch whose stored audio this one scored again (POST .../rescore); no foreign
    # key: that batch may since have been deleted.
    rescored_from: Mapped[str | None] = mapped_column(String(36))

    __table_args__ = (
        Index("ix_batches_owner_created", "owner", "created_at", "id"),
        Index("ix_batches_status", "status"),
    )


class Recording(Base):
    """A long recording (hours): its audio lives in the recording store, its work in
    job rows (``Job.recording_id``), its result here once every segment is done."""

    __tablename__ = "recordings"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    # queued -> running (its decoding pass claimed) -> succeeded | failed (JobStatus).
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED)
    label: Mapped[str | None] = mapped_column(String(255))
    recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    filename: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(127))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    audio_sha256: Mapped[str] = mapped_column(String(64))
    # The upload as stored: [[key, bytes], ...] in order (one part for a POST; a
    # resumable upload's parts, one per PATCH, read as one file).
    audio_parts: Mapped[list[list[Any]]] = mapped_column(JSON)
    # 16 kHz mono s16 PCM of the whole recording, from byte ``pcm_offset`` of ``pcm_key``
    # (the upload itself when it already is such a WAV): what segments and clips read.
    pcm_key: Mapped[str | None] = mapped_column(String(255))
    pcm_offset: Mapped[int | None] = mapped_column(BigInteger)
    samples: Mapped[int | None] = mapped_column(BigInteger)
    duration_s: Mapped[float | None] = mapped_column(Float)
    segments_total: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    audio_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # cough_count, episodes, coughs_per_hour, hourly, ten_minutes, detector: written once.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_recordings_owner_created", "owner", "created_at", "id"),
        Index("ix_recordings_status", "status"),
    )


class RecordingEvent(Base):
    """One cough event of a finished recording, in time order (``seq`` from 1)."""

    __tablename__ = "recording_events"

    recording_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("recordings.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)


class Upload(Base):
    """A resumable upload (tus 1.0) in progress: its bytes so far are ``parts`` in the
    recording store; once ``offset`` reaches ``length`` it becomes a recording."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    parts: Mapped[list[list[Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    recording_id: Mapped[str | None] = mapped_column(String(36))


class BatchEvaluation(Base):
    """A finished batch's evaluation, computed once by a worker (worker/evaluation.py)
    and answered from here: a finished batch's items never change (deleting one forgets
    it). ``variant`` names what was evaluated, ``default`` for the batch's labelled
    items as they are (room for other views of the same batch, such as a comparison
    with another batch or the cohort without a model's training items); ``format`` is
    the computation's version: a row of an older one is computed again when asked for.
    ``state``: ``pending`` (a worker was asked at ``requested_at``), ``ready`` (``body``
    and the pictures) or ``refused`` (``body`` is the refusal's code and message)."""

    __tablename__ = "batch_evaluations"

    batch_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True
    )
    variant: Mapped[str] = mapped_column(String(80), primary_key=True)
    format: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    body: Mapped[dict | None] = mapped_column(JSON)
    roc_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    calibration_png: Mapped[bytes | None] = mapped_column(LargeBinary)


class AudioBlob(Base):
    """Uploaded audio kept in the database, so a worker on any host can read it."""

    __tablename__ = "audio_blobs"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ServedModel(Base):
    """A bundle some worker has loaded: what ``GET /api/v1/models`` lists.

    Workers register their bundles at start and refresh ``last_seen_at`` while
    running, so the API reports what is served, not what is configured.
    """

    __tablename__ = "served_models"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))  # "diagnosis" or "cough_gate"
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    manifest: Mapped[dict] = mapped_column(JSON)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The first bundle of the worker that registered it: the deployment's default model
    # unless TUSSIS_DEFAULT_MODEL names another.
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The registering worker's TUSSIS_QUEUE: deployments sharing one database (tests do)
    # each see their own models. Null for rows written before migration 0010.
    queue: Mapped[str | None] = mapped_column(String(200))


class ApiKey(Base):
    """An API key: only its SHA-256 is stored, never the key itself."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    owner: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, so a person can tell keys apart in a list.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IdempotencyKey(Base):
    """A submission's ``Idempotency-Key``: a retry with the same key and body gets
    the original resource back instead of creating a second one."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    route: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Deletion(Base):
    """What a ``DELETE`` removed, so that repeating it answers the same (idempotent)
    without keeping anything of the job or batch but its id and owner."""

    __tablename__ = "deletions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "job" or "batch"
    owner: Mapped[str] = mapped_column(String(64))
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
