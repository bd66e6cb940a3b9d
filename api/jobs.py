"""``/api/v1/jobs``: submit a recording, poll it, list and delete jobs."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from flask import Response, jsonify, request
from flask_openapi3 import APIBlueprint
from sqlalchemy.orm import Session

from api import contract, intake, pacing, polling, schemas
from api.auth import current_owner
from api.contract import JobPath
from api.errors import ApiError, upload_too_large
from api.idempotency import idempotent, replay_job
from api.paging import PageQuery, invalid_cursor, page_response
from api.representation import job_etag, job_to_dict, job_url, known_notes, model_notes
from shared import evaluations, jobs, notify, polls, retention
from shared.audio import AudioError
from shared.db import session_scope
from shared.storage import AudioNotFound, spectrogram_key
from shared.tables import TERMINAL_STATUSES, Job, JobStatus, utcnow

log = logging.getLogger(__name__)
bp = APIBlueprint("jobs", __name__, abp_tags=[contract.TAGS["jobs"]])

_JOB = contract.json_answer(
    schemas.Job,
    "The job.",
    {
        "Retry-After": contract.RETRY_AFTER,
        "ETag": contract.ETAG,
        "Preference-Applied": contract.PREFERENCE_APPLIED,
    },
)


def _owned(session: Session, job_id: str, owner: str) -> Job:
    """The caller's job, or 404 (another caller's job is as absent as a missing one)."""
    job = jobs.get_for_owner(session, job_id, owner)
    if job is None:
        raise ApiError(404, "job_not_found", f"There is no job {job_id}.")
    return job


def read_upload(field: str) -> tuple[bytes, str | None, str | None]:
    """The bytes of one uploaded file field, checked for presence and size."""
    settings = intake.settings()
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


@bp.post(
    "/jobs",
    responses=contract.answers(
        {
            202: contract.json_answer(
                schemas.Job,
                "Accepted and queued; poll `Location`.",
                {"Location": contract.LOCATION, "Retry-After": contract.RETRY_AFTER},
            ),
            200: contract.json_answer(
                schemas.Job,
                "A replay of an earlier request with this `Idempotency-Key`: the job as it is now.",
                {"Location": contract.LOCATION, "Idempotent-Replayed": contract.REPLAYED},
            ),
        },
        404,
        409,
        413,
        422,
    ),
    openapi_extensions={
        **contract.multipart(
            "The recording, as the file field `audio`; `model` chooses the model.",
            {"audio": contract.FILE, "model": contract.MODEL_FIELD},
            ["audio"],
        ),
        "parameters": [contract.IDEMPOTENCY_KEY],
    },
)
@idempotent("jobs", replay_job)
def submit_job() -> tuple[Response, int, dict[str, str]]:
    """Submit a recording"""
    settings = intake.settings()
    owner = current_owner()
    data, filename, content_type = read_upload("audio")
    model = intake.chosen_model(request.form.get("model"))
    try:
        duration = intake.usable_duration(data)
    except AudioError as exc:
        raise ApiError(422, exc.code, exc.message) from exc
    job = intake.store(owner, intake.new_job(data, filename, content_type, duration), model=model)
    intake.publish_single(job.id, model)
    # Its place in the queue is not read here (that would be a query more per upload):
    # the estimate for a job with nobody ahead of it.
    retry_after = pacing.for_queued(settings, 0)
    headers = {"Location": job_url(job.id), "Retry-After": str(retry_after)}
    return jsonify(job_to_dict(job, {})), 202, headers


@bp.get(
    "/jobs/<job_id>",
    responses=contract.answers({200: _JOB, 304: contract.NOT_MODIFIED}, 404),
    openapi_extensions={"parameters": [contract.IF_NONE_MATCH, contract.PREFER_WAIT]},
)
def get_job(path: JobPath) -> Response:
    """Poll a job

    One database round trip (the key and the job). `If-None-Match` with the last
    `ETag` answers `304` while nothing changed; `Prefer: wait=N` (N up to 60) holds
    the answer until the job has finished, or N seconds (docs/api.md, Polling)."""
    job_id = path.job_id
    settings = intake.settings()
    missing = ApiError(404, "job_not_found", f"There is no job {job_id}.")

    def fetch() -> list[Any]:
        return polling.read(settings.database_url, partial(polls.job, job_id=job_id), missing)

    def build(rows: list[Any]) -> polling.Answer:
        job = rows[0]
        notes = known_notes(rows)
        if notes is None:
            with session_scope(settings.database_url) as session:
                notes = model_notes(session, rows)
        headers = {}
        if job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
            headers["Retry-After"] = str(pacing.for_job(settings, job.status, job.ahead))
        return polling.Answer(job_etag(job, notes), lambda: job_to_dict(job, notes), headers)

    return polling.answer(
        fetch,
        build,
        wait_key=notify.job_key(job_id),
        finished=lambda rows: rows[0].status in TERMINAL_STATUSES,
    )


@bp.get(
    "/jobs",
    responses=contract.answers(
        {200: contract.json_answer(schemas.JobPage, "A page of jobs.", {"Link": contract.LINK})}
    ),
)
def list_jobs(query: PageQuery) -> Response:
    """List jobs, newest first"""
    settings = intake.settings()
    owner = current_owner()
    limit = query.page_size(settings.page_size)
    with session_scope(settings.database_url) as session:
        try:
            rows, next_cursor = jobs.list_for_owner(session, owner, limit, query.cursor or None)
        except ValueError as exc:
            raise invalid_cursor() from exc
        notes = model_notes(session, rows)
        body = {"jobs": [job_to_dict(j, notes) for j in rows], "next_cursor": next_cursor}
    return page_response(body, next_cursor, limit)


@bp.delete(
    "/jobs/<job_id>",
    responses=contract.answers({204: contract.no_content("Deleted (or already deleted).")}, 404),
)
def delete_job(path: JobPath) -> tuple[str, int]:
    """Delete a job, its audio and its spectrogram

    At once and idempotently: a repeat by the same owner answers 204 again (the
    tombstone says it was theirs); anyone else gets the same 404 as a missing id."""
    job_id = path.job_id
    settings = intake.settings()
    owner = current_owner()
    with session_scope(settings.database_url) as session:
        job = jobs.get_for_owner(session, job_id, owner)
        if job is None and retention.was_deleted(session, job_id, retention.KIND_JOB, owner):
            return "", 204
        job = _owned(session, job_id, owner)
        audio_key, batch_id = job.audio_key, job.batch_id
        # Only the DELETE whose statement removed the row writes the tombstone, so two
        # at once both answer 204 instead of one failing on the tombstone's key.
        if jobs.delete_job(session, job_id):
            retention.record_deletion(session, job_id, retention.KIND_JOB, owner, utcnow())
            if batch_id is not None:
                # Its batch's stored evaluation counted it (and may name its path).
                evaluations.forget(session, batch_id)
    # After the commit: a worker still analysing the job finds its row gone and drops
    # its result. If this storage delete fails, the retention task's orphan pass
    # removes the files later (they are keys with no job row).
    try:
        intake.storage().delete_many(retention.audio_and_spectrograms([audio_key]))
    except Exception as exc:
        log.warning("job %s deleted; its audio is left to the orphan purge (%s)", job_id, exc)
    return "", 204


# Jobs whose recording decoded: the only ones a picture can be drawn of.
DRAWABLE = (JobStatus.SUCCEEDED,)
DRAWABLE_FAILURES = ("no_cough_detected",)
DRAWING_RETRY_S = 1


@bp.get(
    "/jobs/<job_id>/spectrogram.png",
    responses=contract.answers(
        {
            200: contract.file_answer("image/png", "The mel spectrogram."),
            202: contract.json_answer(
                schemas.PictureDrawing,
                "A worker is drawing it now; ask again after `Retry-After` seconds.",
                {"Retry-After": contract.RETRY_AFTER},
            ),
        },
        404,
    ),
)
def get_spectrogram(path: JobPath) -> Response:
    """A job's spectrogram (PNG), drawn on the first request"""
    job_id = path.job_id
    settings = intake.settings()
    owner = current_owner()
    with session_scope(settings.database_url) as session:
        job = _owned(session, job_id, owner)
        key, ready, deleted = job.audio_key, job.has_spectrogram, job.audio_deleted_at
        drawable = job.status in DRAWABLE or (
            job.status == JobStatus.FAILED and job.error_code in DRAWABLE_FAILURES
        )
    if deleted is not None:
        raise ApiError(
            404,
            "audio_deleted",
            "The recording and its spectrogram were deleted after the retention period; "
            "the result is still available.",
        )
    missing = ApiError(
        404, "spectrogram_not_found", "The spectrogram is not available (yet) for this job."
    )
    if ready:
        try:
            png = intake.storage().get(spectrogram_key(key))
        except AudioNotFound as exc:
            raise missing from exc
        # Cache-Control: no-store, as on every API answer (api/__init__.py): a cached
        # picture of health data would outlive the job's DELETE.
        return Response(png, mimetype="image/png")
    if not drawable:
        raise missing
    # Drawn only for those who look at it: the analysis never spends time on it. One
    # render is queued at a time: repeated requests while it is drawn queue nothing.
    with session_scope(settings.database_url) as session:
        ask = jobs.ask_for_spectrogram(session, job_id)
    if ask:
        intake.publish_spectrogram(job_id)
    response = jsonify(
        status="drawing",
        message="The spectrogram is being drawn; ask again in a moment.",
    )
    response.status_code = 202
    response.headers["Retry-After"] = str(DRAWING_RETRY_S)
    return response
