"""``/api/v1/batches``: many recordings in one request (files or a .zip),
progress, per-item results and a streamed CSV. See docs/batches-api.md."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from sqlalchemy import and_, delete, or_, select
from werkzeug.datastructures import FileStorage

from api import intake
from api.archive import Limits, Member, iter_members, open_archive, safe_path
from api.auth import current_owner
from api.errors import ApiError
from api.paging import invalid_cursor, page_limit
from api.representation import iso, job_to_dict
from shared import batches
from shared.audio import AUDIO_SUFFIXES, AudioError
from shared.db import session_scope
from shared.models import Batch, BatchStatus, Job, utcnow

log = logging.getLogger(__name__)
bp = Blueprint("batches", __name__)

CSV_COLUMNS = [
    "path", "status", "diagnosis", "score", "cough_detected", "cough_score", "error_code",
    "model_id", "model_version", "label", "sha256", "job_id",
]  # fmt: skip


def batch_url(batch_id: str) -> str:
    return f"/api/v1/batches/{batch_id}"


def _not_found(batch_id: str) -> ApiError:
    return ApiError(404, "batch_not_found", f"There is no batch {batch_id}.")


def _load(session: Any, batch_id: str, owner: str) -> Batch:
    batch = session.get(Batch, batch_id)
    if batch is None or batch.owner != owner:
        raise _not_found(batch_id)
    return batch


def batch_to_dict(session: Any, batch: Batch) -> dict[str, Any]:
    c = batches.counts(session, batch.id)
    total = c.total
    progress = c.done / total if total else (1.0 if batch.status == BatchStatus.COMPLETED else 0.0)
    started = batch.created_at
    end = batch.finished_at or utcnow()
    elapsed = (end - started).total_seconds()
    eta = None
    if batch.status != BatchStatus.COMPLETED and c.done and c.done < total:
        eta = round(elapsed / c.done * (total - c.done), 1)
    callback = None
    if batch.callback_url:
        callback = {
            "url": batch.callback_url,
            "state": batch.callback_state or "waiting",
            "attempts": batch.callback_attempts,
        }
    url = batch_url(batch.id)
    return {
        "id": batch.id,
        "status": batch.status,
        "created_at": iso(batch.created_at),
        "closed_at": iso(batch.closed_at),
        "finished_at": iso(batch.finished_at),
        "total": total,
        "counts": c.as_dict(),
        "progress": round(progress, 4),
        "elapsed_s": round(elapsed, 1),
        "eta_s": eta,
        "callback": callback,
        "links": {"self": url, "items": f"{url}/items", "results": f"{url}/results.csv"},
    }


def _callback_url() -> str | None:
    url = (request.form.get("callback_url") or "").strip()
    if not url:
        return None
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or len(url) > 2048:
        raise ApiError(
            400, "invalid_callback_url", "'callback_url' must be an absolute http(s) URL."
        )
    return url


def _prepare_request() -> None:
    s = intake.settings()
    # Batches are large: their own body limit, and room for one part per file.
    request.max_content_length = s.max_batch_upload_bytes
    request.max_form_parts = s.archive_max_members + 16


def _file_members(files: list[FileStorage]) -> Iterator[Member]:
    s = intake.settings()
    for upload in files:
        name = upload.filename or "unnamed"
        path = safe_path(name)
        if path is None:
            yield Member(name, code="unsafe_path", message="The file name is not a safe path.")
            continue
        suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
        if suffix and suffix not in AUDIO_SUFFIXES:
            yield Member(
                path,
                code="not_audio",
                message="This is not an audio file (by its extension); it was skipped.",
            )
            continue
        data = upload.stream.read(s.max_upload_bytes + 1)
        if len(data) > s.max_upload_bytes:
            yield Member(
                path,
                code="upload_too_large",
                message="This file is larger than the per-recording upload limit.",
            )
            continue
        yield Member(path, data=data)


def _members() -> tuple[Iterator[Member], dict[str, str]]:
    s = intake.settings()
    archive = request.files.get("archive")
    files = request.files.getlist("files")
    if archive is not None and files:
        raise ApiError(400, "missing_files", "Send either 'files' or one 'archive', not both.")
    if archive is not None:
        limits = Limits(
            max_members=s.archive_max_members,
            max_uncompressed=s.archive_max_uncompressed_bytes,
            max_ratio=s.archive_max_ratio,
            max_member_bytes=s.max_upload_bytes,
        )
        zf, infos, labels = open_archive(archive.stream, limits)
        return iter_members(zf, infos, limits), labels
    if not files:
        raise ApiError(
            400,
            "missing_files",
            "Send the recordings as repeated multipart file fields named 'files', "
            "or one .zip as 'archive'.",
        )
    return _file_members(files), {}


def _ingest(batch_id: str, owner: str) -> dict[str, Any]:
    """Validate, store and queue every member; report per-item rejections."""
    s = intake.settings()
    members, labels = _members()
    with session_scope(s.database_url) as session:
        seen = batches.existing_items(session, batch_id)
        seq = batches.next_seq(session, batch_id)
    accepted: list[str] = []
    rejected: list[dict[str, Any]] = []
    duplicates = 0
    for member in members:
        if member.data is None:
            rejected.append(
                {"path": member.path, "error": {"code": member.code, "message": member.message}}
            )
            continue
        try:
            duration = intake.usable_duration(member.data)
        except AudioError as exc:
            rejected.append(
                {"path": member.path, "error": {"code": exc.code, "message": exc.message}}
            )
            continue
        label = labels.get(member.path)
        item = intake.new_job(
            member.data,
            member.path.rsplit("/", 1)[-1],
            None,
            duration,
            path=member.path,
            label=label[:255] if label else None,
        )
        if (item.path, item.sha256) in seen:
            duplicates += 1
            continue
        seen.add((item.path, item.sha256))
        job = intake.store(owner, item, batch_id=batch_id, seq=seq)
        seq += 1
        accepted.append(job.id)
    with session_scope(s.database_url) as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        batch.total = batch.total + len(accepted)
    intake.publish_chunks(accepted)
    return {"accepted": len(accepted), "duplicates": duplicates, "rejected": rejected}


def _finish_if_closed(batch_id: str) -> None:
    batches.complete_and_notify(current_app.extensions["celery"], intake.settings(), batch_id)


@bp.post("/batches")
def create_batch() -> tuple[Response, int, dict[str, str]]:
    _prepare_request()
    s = intake.settings()
    owner = current_owner()
    callback_url = _callback_url()
    keep_open = (request.form.get("open") or "").lower() in ("1", "true", "yes")
    batch_id = batches.new_batch_id()
    with session_scope(s.database_url) as session:
        session.add(
            Batch(
                id=batch_id,
                owner=owner,
                status=BatchStatus.OPEN,
                total=0,
                created_at=utcnow(),
                callback_url=callback_url,
                callback_attempts=0,
            )
        )
    try:
        report = _ingest(batch_id, owner)
    except ApiError:
        # A whole-request rejection found mid-archive: forget the batch and what it stored.
        with session_scope(s.database_url) as session:
            keys = list(session.scalars(select(Job.audio_key).where(Job.batch_id == batch_id)))
            session.execute(delete(Job).where(Job.batch_id == batch_id))
            session.delete(session.get(Batch, batch_id))
        for key in keys:
            intake.storage().delete(key)
        raise
    if not keep_open:
        batches.close(s.database_url, batch_id)
        _finish_if_closed(batch_id)
    with session_scope(s.database_url) as session:
        body = {**batch_to_dict(session, session.get(Batch, batch_id)), **report}
    return (
        jsonify(body),
        202,
        {"Location": batch_url(batch_id), "Retry-After": str(s.retry_after_s)},
    )


@bp.post("/batches/<batch_id>/items")
def add_items(batch_id: str) -> tuple[Response, int]:
    _prepare_request()
    s = intake.settings()
    owner = current_owner()
    with session_scope(s.database_url) as session:
        if _load(session, batch_id, owner).status != BatchStatus.OPEN:
            raise ApiError(409, "batch_closed", "This batch is closed; start a new batch.")
    report = _ingest(batch_id, owner)
    with session_scope(s.database_url) as session:
        body = {**batch_to_dict(session, session.get(Batch, batch_id)), **report}
    return jsonify(body), 202


@bp.post("/batches/<batch_id>/close")
def close_batch(batch_id: str) -> Response:
    s = intake.settings()
    owner = current_owner()
    with session_scope(s.database_url) as session:
        _load(session, batch_id, owner)
    batches.close(s.database_url, batch_id)
    _finish_if_closed(batch_id)
    with session_scope(s.database_url) as session:
        return jsonify(batch_to_dict(session, _load(session, batch_id, owner)))


@bp.get("/batches/<batch_id>")
def get_batch(batch_id: str) -> Response:
    s = intake.settings()
    owner = current_owner()
    with session_scope(s.database_url) as session:
        body = batch_to_dict(session, _load(session, batch_id, owner))
    response = jsonify(body)
    if body["status"] != BatchStatus.COMPLETED:
        response.headers["Retry-After"] = str(s.retry_after_s)
    return response


def _seq_cursor() -> int:
    cursor = request.args.get("cursor") or "0"
    if not cursor.isdigit():
        raise invalid_cursor()
    return int(cursor)


@bp.get("/batches/<batch_id>/items")
def list_items(batch_id: str) -> Response:
    s = intake.settings()
    owner = current_owner()
    limit, after = page_limit(intake.settings().page_size), _seq_cursor()
    with session_scope(s.database_url) as session:
        _load(session, batch_id, owner)
        rows = list(
            session.scalars(
                select(Job)
                .where(Job.batch_id == batch_id, Job.batch_seq > after)
                .order_by(Job.batch_seq)
                .limit(limit + 1)
            )
        )
        items = [job_to_dict(j) for j in rows[:limit]]
        next_cursor = str(rows[limit - 1].batch_seq) if len(rows) > limit else None
    return jsonify({"items": items, "next_cursor": next_cursor})


def _csv_row(job: Job) -> list[Any]:
    return [
        job.path, job.status, job.diagnosis, job.score,
        "" if job.cough_detected is None else str(job.cough_detected).lower(),
        job.cough_score, job.error_code, job.model_id, job.model_version, job.label,
        job.audio_sha256, job.id,
    ]  # fmt: skip


@bp.get("/batches/<batch_id>/results.csv")
def results_csv(batch_id: str) -> Response:
    s = intake.settings()
    owner = current_owner()
    with session_scope(s.database_url) as session:
        _load(session, batch_id, owner)

    def generate() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CSV_COLUMNS)
        after = 0
        while True:
            with session_scope(s.database_url) as session:
                rows = list(
                    session.scalars(
                        select(Job)
                        .where(Job.batch_id == batch_id, Job.batch_seq > after)
                        .order_by(Job.batch_seq)
                        .limit(500)
                    )
                )
            for job in rows:
                writer.writerow(_csv_row(job))
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
            if len(rows) < 500:
                return
            after = rows[-1].batch_seq or after

    response = Response(stream_with_context(generate()), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="tussis-{batch_id}.csv"'
    return response


@bp.get("/batches")
def list_batches() -> Response:
    s = intake.settings()
    owner = current_owner()
    limit = page_limit(intake.settings().page_size)
    cursor = request.args.get("cursor")
    with session_scope(s.database_url) as session:
        query = select(Batch).where(Batch.owner == owner)
        if cursor:
            try:
                created_text, last_id = cursor.split("|", 1)
                created = datetime.fromisoformat(created_text)
            except ValueError as exc:
                raise invalid_cursor() from exc
            query = query.where(
                or_(
                    Batch.created_at < created,
                    and_(Batch.created_at == created, Batch.id < last_id),
                )
            )
        rows = list(
            session.scalars(
                query.order_by(Batch.created_at.desc(), Batch.id.desc()).limit(limit + 1)
            )
        )
        body = [batch_to_dict(session, b) for b in rows[:limit]]
        next_cursor = (
            f"{rows[limit - 1].created_at.isoformat()}|{rows[limit - 1].id}"
            if len(rows) > limit
            else None
        )
    return jsonify({"batches": body, "next_cursor": next_cursor})
