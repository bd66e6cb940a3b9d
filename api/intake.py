"""Turning accepted audio into stored, queued jobs: shared by single jobs and batches."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from flask import current_app
from sqlalchemy.orm import Session

from api.errors import ApiError
from api.guards import has_control
from shared import jobs, model_registry
from shared.audio import check_usable, probe
from shared.config import Settings
from shared.db import session_scope
from shared.queue import Model, publish_analysis, publish_chunk
from shared.queue import publish_spectrogram as publish_spectrogram_task
from shared.storage import AudioStorage
from shared.tables import Job, ServedModel

log = logging.getLogger(__name__)


def settings() -> Settings:
    return current_app.extensions["tussis.settings"]


def storage() -> AudioStorage:
    return current_app.extensions["tussis.storage"]


def usable_duration(data: bytes) -> float:
    """Check like the worker will; raises ``AudioError`` with a code.

    A probe, not a decode: the same figures and refusals as the worker's decode (see
    ``shared.audio.probe``) without resampling samples the API never uses."""
    s = settings()
    audio = probe(data, max_seconds=s.max_duration_s + 1)
    check_usable(audio, s.min_duration_s, s.max_duration_s, s.silence_dbfs)
    return audio.duration_s


# Longer than any name@version the served_models columns hold (128 + 1 + 64).
MAX_MODEL_SPEC = 200


def not_served(wanted: str, served: list[str]) -> ApiError:
    listed = ", ".join(served) if served else "none (no worker is running)"
    return ApiError(
        422,
        "model_not_served",
        f"No running worker serves the model '{wanted}'; served now: {listed}. Name one of "
        "them as `model` (`name` or `name@version`), or leave `model` out for the default.",
        served=served,
    )


class ActiveModels:
    """The diagnosis models live workers serve, as this API process last read them.

    Which models are served changes when workers start or retire (minutes apart); jobs
    arrive many times a second, and a submission is a key lookup, two INSERTs and one
    commit (tests/api/test_polls.py). So the list is read at most once per
    ``min(5 s, TUSSIS_MODEL_GRACE / 4)``, and again at once when it lacks the model
    asked for: a worker that has just registered is never refused for a stale list
    (while the list is empty, a job that names no model waits, unpinned, for any
    worker). A retired model stays accepted that much longer at most, inside the grace
    after which the sweeper fails its work with ``model_not_served``. One per app
    (``create_app``), so each app reads its own database."""

    MAX_AGE_S = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._rows: list[ServedModel] | None = None

    def get(self, s: Settings, *, fresh: bool = False) -> list[ServedModel]:
        now = time.monotonic()
        max_age = min(self.MAX_AGE_S, s.model_grace_s / 4)
        with self._lock:
            if not fresh and self._rows is not None and now - self._read_at < max_age:
                return self._rows
        with session_scope(s.database_url) as session:
            # expire_on_commit is off: the rows stay readable after the session.
            rows = model_registry.active_diagnosis(session, s.queue_name, s.model_grace_s)
        with self._lock:
            self._read_at, self._rows = now, rows
        return rows


def chosen_model(wanted: str | None) -> Model:
    """The model a new job or batch is pinned to, from the request's ``model`` field
    (``name`` or ``name@version``; absent or empty: the deployment's default), resolved
    against the models live workers serve (``served_models``). None only while no worker
    has registered any model and none was asked for. 422 ``model_not_served`` otherwise."""
    s = settings()
    text = (wanted or "").strip()
    if len(text) > MAX_MODEL_SPEC or has_control(text):
        raise not_served(text[:MAX_MODEL_SPEC].encode("unicode_escape").decode(), [])
    served: ActiveModels = current_app.extensions["tussis.active_models"]
    try:
        return model_registry.choose(served.get(s), text or None, s.default_model)
    except model_registry.ModelNotServed:
        pass
    try:
        return model_registry.choose(served.get(s, fresh=True), text or None, s.default_model)
    except model_registry.ModelNotServed as exc:
        raise not_served(exc.wanted, exc.served) from None


@dataclass(frozen=True)
class NewJob:
    data: bytes
    filename: str | None
    content_type: str | None
    duration_s: float
    sha256: str
    path: str | None = None
    label: str | None = None
    group: str | None = None


# The lengths of the jobs table's filename and content_type columns.
MAX_FILENAME = 255
MAX_CONTENT_TYPE = 127


def checked_filename(filename: str | None) -> str | None:
    """The upload's file name as it will be recorded; 400 if it could not be a name."""
    if filename and (has_control(filename) or len(filename) > MAX_FILENAME):
        raise ApiError(
            400,
            "invalid_filename",
            "The file name contains a control character (such as a NUL byte) or is longer "
            f"than {MAX_FILENAME} characters; rename the file and send it again.",
        )
    return filename or None


def recorded_content_type(content_type: str | None) -> str | None:
    """The declared type is recorded, never trusted: one that cannot be a media type
    (too long, control characters, not ASCII) is recorded as unknown, not refused."""
    if (
        not content_type
        or len(content_type) > MAX_CONTENT_TYPE
        or not content_type.isascii()
        or has_control(content_type)
    ):
        return None
    return content_type


def new_job(
    data: bytes,
    filename: str | None,
    content_type: str | None,
    duration_s: float,
    path: str | None = None,
    label: str | None = None,
    group: str | None = None,
) -> NewJob:
    return NewJob(
        data,
        checked_filename(filename),
        recorded_content_type(content_type),
        duration_s,
        hashlib.sha256(data).hexdigest(),
        path,
        label,
        group,
    )


def _add_row(
    session: Session,
    job_id: str,
    owner: str,
    item: NewJob,
    batch_id: str | None,
    seq: int | None,
    model: Model,
) -> Job:
    """The job row of one checked upload (its audio is stored under ``job_id``)."""
    return jobs.create(
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
        group=item.group,
        model=model,
    )


def store(
    owner: str,
    item: NewJob,
    batch_id: str | None = None,
    seq: int | None = None,
    model: Model = None,
) -> Job:
    """Store the audio and the job row in one transaction, one commit (the worker must
    always find both); nothing is left of a failed one."""
    job_id = jobs.new_job_id()
    return _store(owner, [(job_id, item)], batch_id, seq, model)[0]


def store_many(
    owner: str, items: Sequence[NewJob], batch_id: str, first_seq: int, model: Model = None
) -> list[str]:
    """:func:`store` for a batch chunk: all the audio and all the rows (``first_seq``,
    ``first_seq + 1``, ... in order) in one transaction and one commit, an INSERT for
    the audio and one for the rows. Either every item is stored, or none is (and this
    raises). Returns the new job ids."""
    if not items:
        return []
    pairs = [(jobs.new_job_id(), item) for item in items]
    return [job.id for job in _store(owner, pairs, batch_id, first_seq, model)]


def _store(
    owner: str,
    pairs: Sequence[tuple[str, NewJob]],
    batch_id: str | None,
    first_seq: int | None,
    model: Model,
) -> list[Job]:
    try:
        with session_scope(settings().database_url) as session:
            storage().put_new(session, {job_id: item.data for job_id, item in pairs})
            return [
                _add_row(
                    session,
                    job_id,
                    owner,
                    item,
                    batch_id,
                    None if first_seq is None else first_seq + offset,
                    model,
                )
                for offset, (job_id, item) in enumerate(pairs)
            ]
    except BaseException:
        # A file store wrote the audio before the rows: no row will ever point at it, so
        # it goes now rather than wait for the retention task (hours away, or off).
        _forget_audio([job_id for job_id, _ in pairs])
        raise


def _forget_audio(keys: Sequence[str]) -> None:
    try:
        storage().delete_many(keys)
    except Exception as exc:
        log.warning("could not delete the audio of refused uploads %s (%s)", list(keys), exc)


def discard_jobs(job_ids: Sequence[str]) -> None:
    """Delete jobs this request stored (rows, then audio) when the request fails after
    all: a refused request leaves nothing behind."""
    if not job_ids:
        return
    try:
        with session_scope(settings().database_url) as session:
            for job_id in job_ids:
                jobs.delete_job(session, job_id)
    except Exception as exc:
        # The request's own error is the one to answer. Rows left here are queued jobs
        # the sweeper publishes, so the client still gets their results by listing.
        log.warning("could not delete the jobs of a refused request %s (%s)", job_ids, exc)
        return
    _forget_audio(job_ids)


def publish_single(job_id: str, model: Model = None) -> None:
    try:
        publish_analysis(current_app.extensions["celery"], settings(), job_id, model)
    except Exception as exc:
        # The row is committed; the next sweep publishes it.
        log.warning(
            "job %s accepted but not yet published (%s); the sweeper will retry", job_id, exc
        )
        _leave_to_the_sweeper([job_id])


def publish_spectrogram(job_id: str) -> None:
    try:
        publish_spectrogram_task(current_app.extensions["celery"], settings(), job_id)
    except Exception as exc:
        # The caller asks again after Retry-After, and that request publishes again.
        log.warning("job %s: spectrogram not queued (%s)", job_id, exc)


def leave_to_the_sweeper(job_ids: list[str]) -> None:
    """The broker refused these jobs' messages: the next sweep publishes them."""
    _leave_to_the_sweeper(job_ids)


def _leave_to_the_sweeper(job_ids: list[str]) -> None:
    try:
        with session_scope(settings().database_url) as session:
            jobs.mark_unpublished(session, job_ids)
    except Exception as exc:
        # Then the sweeper finds them after TUSSIS_REQUEUE_AFTER, as a lost message.
        log.warning("could not mark %d job(s) for the next sweep (%s)", len(job_ids), exc)


def publish_chunks(job_ids: Sequence[str], model: Model = None) -> None:
    s = settings()
    size = max(1, s.batch_chunk_size)
    for start in range(0, len(job_ids), size):
        chunk = list(job_ids[start : start + size])
        try:
            publish_chunk(current_app.extensions["celery"], s, chunk, model)
        except Exception as exc:
            log.warning("batch chunk not yet published (%s); the sweeper will retry", exc)
            _leave_to_the_sweeper(chunk)
