"""``/api/v1/jobs``: submit a recording, poll it, list and delete jobs."""

from __future__ import annotations

import hashlib
import logging

from flask import Blueprint, Response, current_app, jsonify, request

from api.auth import current_owner
from api.errors import ApiError, upload_too_large
from api.representation import job_to_dict, job_url
from shared import jobs
from shared.audio import AudioError, check_usable, decode
from shared.config import Settings
from shared.db import session_scope
from shared.models import Job, JobStatus, utcnow
from shared.queue import publish_analysis
from shared.storage import AudioStorage

log = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__)

MAX_PAGE_SIZE = 200


def _settings() -> Settings:
    return current_app.extensions["tussis.settings"]


def _storage() -> AudioStorage:
    return current_app.extensions["tussis.storage"]


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "job_not_found", f"There is no job {job_id}.")


def read_upload(field: str) -> tuple[bytes, str | None, str | None]:
    """The bytes of one uploaded file field, checked for presence and size."""
    settings = _settings()
    upload = request.files.get(field)
    if upload is None:
        raise ApiError(
            400,
            "missing_audio",
            f"Send the recording as a multipart/form-data file field named '{field}'.",
        )
    data = upload.stream.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise upload_too_large(settings.max_upload_bytes)
    return data, upload.filename or None, upload.mimetype or None


def checked_duration(data: bytes) -> float:
    """Decode and check the audio at the door, so nothing unusable is queued."""
    settings = _settings()
    try:
        audio = decode(data, max_seconds=settings.max_duration_s + 1)
        check_usable(audio, settings.min_duration_s, settings.max_duration_s, settings.silence_dbfs)
    except AudioError as exc:
        raise ApiError(422, exc.code, exc.message) from exc
    return audio.duration_s


@bp.post("/jobs")
def submit_job() -> tuple[Response, int, dict[str, str]]:
    settings = _settings()
    owner = current_owner()
    data, filename, content_type = read_upload("audio")
    duration = checked_duration(data)

    job_id = jobs.new_job_id()
    _storage().put(job_id, data)
    now = utcnow()
    job = Job(
        id=job_id,
        owner=owner,
        status=JobStatus.QUEUED,
        attempts=0,
        filename=filename[:255] if filename else None,
        content_type=content_type[:127] if content_type else None,
        size_bytes=len(data),
        audio_sha256=hashlib.sha256(data).hexdigest(),
        audio_key=job_id,
        duration_s=duration,
        created_at=now,
        updated_at=now,
        published_at=now,
    )
    # Commit first, publish second: a worker must always find the row.
    with session_scope(settings.database_url) as session:
        session.add(job)
    try:
        publish_analysis(current_app.extensions["celery"], settings, job_id)
    except Exception as exc:
        # The row is committed; the sweeper re-publishes queued jobs it finds unpublished.
        log.warning(
            "job %s accepted but not yet published (%s); the sweeper will retry", job_id, exc
        )
    headers = {"Location": job_url(job_id), "Retry-After": str(settings.retry_after_s)}
    return jsonify(job_to_dict(job)), 202, headers


@bp.get("/jobs/<job_id>")
def get_job(job_id: str) -> Response:
    settings = _settings()
    owner = current_owner()
    with session_scope(settings.database_url) as session:
        job = jobs.get_for_owner(session, job_id, owner)
        if job is None:
            raise _not_found(job_id)
        body = job_to_dict(job)
    response = jsonify(body)
    if body["status"] in (JobStatus.QUEUED, JobStatus.RUNNING):
        response.headers["Retry-After"] = str(settings.retry_after_s)
    return response


@bp.get("/jobs")
def list_jobs() -> Response:
    settings = _settings()
    owner = current_owner()
    try:
        limit = int(request.args.get("limit", settings.page_size))
    except ValueError as exc:
        raise ApiError(400, "invalid_limit", "'limit' must be a whole number.") from exc
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ApiError(400, "invalid_limit", f"'limit' must be between 1 and {MAX_PAGE_SIZE}.")
    cursor = request.args.get("cursor") or None
    with session_scope(settings.database_url) as session:
        try:
            rows, next_cursor = jobs.list_for_owner(session, owner, limit, cursor)
        except ValueError as exc:
            raise ApiError(
                400, "invalid_cursor", "'cursor' is not a value this API returned."
            ) from exc
        body = {"jobs": [job_to_dict(j) for j in rows], "next_cursor": next_cursor}
    response = jsonify(body)
    if next_cursor:
        response.headers["Link"] = f'</api/v1/jobs?limit={limit}&cursor={next_cursor}>; rel="next"'
    return response


@bp.delete("/jobs/<job_id>")
def delete_job(job_id: str) -> tuple[str, int]:
    settings = _settings()
    owner = current_owner()
    with session_scope(settings.database_url) as session:
        job = jobs.get_for_owner(session, job_id, owner)
        if job is None:
            raise _not_found(job_id)
        audio_key = job.audio_key
        jobs.delete_job(session, job_id)
    _storage().delete(audio_key)
    return "", 204
