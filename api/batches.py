"""``/api/v1/batches``: many recordings in one request (files or a .zip),
progress, per-item results and a streamed CSV. See docs/batches.md.

Every SQL statement lives in ``shared.batches``; handlers call it with a session."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any
from urllib.parse import urlencode

from flask import Response, current_app, jsonify, request, stream_with_context
from flask_openapi3 import APIBlueprint
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from api import contract, intake, pacing, polling, schemas
from api.archive import (
    MAX_LABELS_BYTES,
    ItemLabel,
    Limits,
    Member,
    iter_members,
    open_archive,
    read_labels_part,
    safe_path,
)
from api.auth import current_owner
from api.contract import BatchPath
from api.errors import ApiError
from api.idempotency import idempotent, replay_batch
from api.paging import PageQuery, invalid_cursor, page_response
from api.representation import (
    batch_body,
    batch_to_dict,
    batch_url,
    body_etag,
    items_etag,
    job_to_dict,
    known_notes,
    model_notes,
)
from shared import batches, netguard, notify, polls, retention
from shared.audio import AudioError
from shared.db import session_scope
from shared.queue import publish_callback
from shared.tables import Batch, BatchStatus, Job, utcnow
from tussis.csv_cells import safe_row
from tussis.formats import AUDIO_SUFFIXES

log = logging.getLogger(__name__)
bp = APIBlueprint("batches", __name__, abp_tags=[contract.TAGS["batches"]])

_FILES = {
    "files": {"type": "array", "items": contract.FILE, "description": "The recordings."},
    "archive": {**contract.FILE, "description": "One .zip of recordings (instead of `files`)."},
    "labels": {
        **contract.FILE,
        "description": "With `files` only: a CSV `path,label[,group]` whose paths are the "
        "files' names (an archive carries its own labels.csv).",
    },
}
_BATCH = contract.json_answer(
    schemas.Batch,
    "The batch.",
    {
        "Retry-After": contract.RETRY_AFTER,
        "ETag": contract.ETAG,
        "Preference-Applied": contract.PREFERENCE_APPLIED,
    },
)
_UPLOADED = contract.json_answer(
    schemas.BatchUpload,
    "Accepted: the batch, with what this request's files became.",
    {"Location": contract.LOCATION, "Retry-After": contract.RETRY_AFTER},
)

CSV_COLUMNS = [
    "path", "status", "diagnosis", "score", "cough_detected", "cough_score", "cough_threshold",
    "error_code", "error_message", "model_id", "model_version", "label", "group", "sha256",
    "job_id",
]  # fmt: skip


def _not_found(batch_id: str) -> ApiError:
    return ApiError(404, "batch_not_found", f"There is no batch {batch_id}.")


def _load(session: Session, batch_id: str, owner: str) -> Batch:
    batch = batches.get_for_owner(session, batch_id, owner)
    if batch is None:
        raise _not_found(batch_id)
    return batch


def _publish_callback(batch_id: str) -> None:
    publish_callback(current_app.extensions["celery"], intake.settings(), batch_id)


def _callback_url() -> str | None:
    url = (request.form.get("callback_url") or "").strip()
    if not url:
        return None
    # The worker will POST to it from inside our network: refuse internal addresses
    # now, while the client can still fix the URL (the worker checks again).
    try:
        netguard.check_url(url, intake.settings().callback_allowed_networks)
    except netguard.CallbackUrlError as exc:
        raise ApiError(400, exc.code, exc.message) from exc
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


def _labels_part() -> bytes | None:
    """The request's ``labels`` part (a file, or a plain field as some clients send it)."""
    upload = request.files.get("labels")
    if upload is not None:
        return upload.stream.read(MAX_LABELS_BYTES + 1)
    text = request.form.get("labels")
    return text.encode("utf-8") if text is not None else None


def _members() -> tuple[Iterator[Member], dict[str, ItemLabel]]:
    s = intake.settings()
    archive = request.files.get("archive")
    files = request.files.getlist("files")
    labels_part = _labels_part()
    if archive is not None and files:
        raise ApiError(400, "missing_files", "Send either 'files' or one 'archive', not both.")
    if archive is not None and labels_part is not None:
        raise ApiError(
            422,
            "invalid_labels",
            "A 'labels' part goes with 'files' only; put labels.csv inside the archive.",
        )
    if archive is not None:
        limits = Limits(
            max_members=s.archive_max_members,
            max_uncompressed=s.archive_max_uncompressed_bytes,
            max_ratio=s.archive_max_ratio,
            max_member_bytes=s.max_upload_bytes,
            max_expansion=s.archive_max_expansion_bytes,
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
    return _file_members(files), read_labels_part(labels_part) if labels_part is not None else {}


def _ingest(batch_id: str, owner: str, model: intake.Model) -> dict[str, Any]:
    """Validate, store and queue every member, each to be scored with the batch's
    ``model``; report per-item rejections."""
    s = intake.settings()
    members, labels = _members()
    with session_scope(s.database_url) as session:
        seen = batches.existing_items(session, batch_id)
        seq = batches.next_seq(session, batch_id)
    accepted: list[str] = []
    published = 0
    chunk = max(1, s.batch_chunk_size)

    def publish_full_chunks() -> None:
        # Workers start on the first chunks while the rest of a large upload is still
        # being checked and stored: the batch stays open, so it cannot complete early.
        nonlocal published
        while len(accepted) - published >= chunk:
            intake.publish_chunks(accepted[published : published + chunk], model)
            published += chunk

    try:
        report = _store_members(
            members, labels, batch_id, owner, seen, seq, accepted, publish_full_chunks, model
        )
        with session_scope(s.database_url) as session:
            batches.add_to_total(session, batch_id, len(accepted))
    except BaseException:
        # Refused part-way (the archive turned out too large, the database failed): the
        # request answers an error, so none of its items may stay behind; a chunk a
        # worker already took finds its rows gone and does nothing.
        intake.discard_jobs(accepted)
        raise
    intake.publish_chunks(accepted[published:], model)
    return report


def _store_members(
    members: Iterator[Member],
    labels: dict[str, ItemLabel],
    batch_id: str,
    owner: str,
    seen: set[tuple[str | None, str]],
    seq: int,
    accepted: list[str],
    on_accept: Callable[[], None],
    model: intake.Model = None,
) -> dict[str, Any]:
    """Store the usable members as jobs, a chunk (``batch_chunk_size``) at a time: one
    storage call and one transaction per chunk, not per recording. Each stored chunk's ids
    go into ``accepted`` at once (so a failure part-way knows what to remove) and
    ``on_accept`` publishes them while the rest is still being read; report the others."""
    rejected: list[dict[str, Any]] = []
    duplicates = 0
    size = max(1, intake.settings().batch_chunk_size)
    pending: list[intake.NewJob] = []

    def flush() -> None:
        nonlocal seq
        # Nothing of a chunk that fails is left (store_many removes its own audio), and
        # the caller discards the chunks stored before it.
        accepted.extend(intake.store_many(owner, pending, batch_id, seq, model))
        seq += len(pending)
        pending.clear()
        on_accept()

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
        given = labels.get(member.path) or ItemLabel(None)
        item = intake.new_job(
            member.data,
            member.path.rsplit("/", 1)[-1],
            None,
            duration,
            path=member.path,
            label=given.label[:255] if given.label else None,
            group=given.group[:255] if given.group else None,
        )
        if (item.path, item.sha256) in seen:
            duplicates += 1
            continue
        seen.add((item.path, item.sha256))
        pending.append(item)
        if len(pending) >= size:
            flush()
    if pending:
        flush()
    return {"accepted": len(accepted), "duplicates": duplicates, "rejected": rejected}


def _forget_batch(batch_id: str) -> None:
    """Delete a batch that its creating request could not finish, with what it stored."""
    try:
        with session_scope(intake.settings().database_url) as session:
            keys = batches.discard(session, batch_id)
        intake.storage().delete_many(keys)
    except Exception:
        # The request's own error is the one to answer; this one is only logged.
        log.exception("could not delete batch %s after its request failed", batch_id)


def _retry_after(body: dict[str, Any]) -> int:
    """``Retry-After`` for a batch's body: from its items still queued or running."""
    counts = body["counts"]
    return pacing.for_batch(intake.settings(), counts["queued"] + counts["running"])


def _close(batch_id: str) -> None:
    """open -> running, then completed at once if nothing is left to analyse."""
    with session_scope(intake.settings().database_url) as session:
        batches.close(session, batch_id)
        batches.complete_and_notify(
            session, batch_id, _publish_callback, current_app.extensions["tussis.notifier"].batch
        )


@bp.post(
    "/batches",
    responses=contract.answers(
        {
            202: _UPLOADED,
            200: contract.json_answer(
                schemas.Batch,
                "A replay of an earlier request with this `Idempotency-Key`: the batch as it "
                "is now.",
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
            "Repeated `files` fields, or one `archive`; see docs/batches.md.",
            {
                **_FILES,
                "callback_url": {
                    "type": "string",
                    "description": "An http(s) URL to notify when the batch completes.",
                },
                "open": {
                    "type": "string",
                    "description": "`true` keeps the batch open for more items.",
                },
                "model": contract.MODEL_FIELD,
            },
            [],
        ),
        "parameters": [contract.IDEMPOTENCY_KEY],
    },
)
@idempotent("batches", replay_batch, prepare=_prepare_request)
def create_batch() -> tuple[Response, int, dict[str, str]]:
    """Create a batch"""
    _prepare_request()
    s = intake.settings()
    owner = current_owner()
    callback_url = _callback_url()
    keep_open = (request.form.get("open") or "").lower() in ("1", "true", "yes")
    model = intake.chosen_model(request.form.get("model"))
    with session_scope(s.database_url) as session:
        batch_id = batches.create(session, owner, callback_url, model).id
    try:
        report = _ingest(batch_id, owner, model)
        if not keep_open:
            _close(batch_id)
    except BaseException:
        # Refused (an archive limit found mid-archive) or failed: the client got no batch,
        # so none may stay behind, least of all one left open forever.
        _forget_batch(batch_id)
        raise
    with session_scope(s.database_url) as session:
        body = {**batch_to_dict(session, _load(session, batch_id, owner)), **report}
    return (
        jsonify(schemas.dump(schemas.BatchUpload, body)),
        202,
        {"Location": batch_url(batch_id), "Retry-After": str(_retry_after(body))},
    )


@bp.post(
    "/batches/<batch_id>/items",
    responses=contract.answers({202: _UPLOADED}, 404, 409, 413, 422),
    openapi_extensions=contract.multipart(
        "More files for an open batch: repeated `files`, or one `archive`.", _FILES, []
    ),
)
def add_items(path: BatchPath) -> tuple[Response, int]:
    """Add files to an open batch"""
    batch_id = path.batch_id
    _prepare_request()
    s = intake.settings()
    owner = current_owner()
    with session_scope(s.database_url) as session:
        batch = _load(session, batch_id, owner)
        if batch.status != BatchStatus.OPEN:
            raise ApiError(409, "batch_closed", "This batch is closed; start a new batch.")
        model = (
            (batch.model_id, batch.model_version)
            if batch.model_id and batch.model_version
            else None
        )
    report = _ingest(batch_id, owner, model)
    with session_scope(s.database_url) as session:
        body = {**batch_to_dict(session, _load(session, batch_id, owner)), **report}
    return jsonify(schemas.dump(schemas.BatchUpload, body)), 202


@bp.post(
    "/batches/<batch_id>/close",
    responses=contract.answers(
        {200: contract.json_answer(schemas.Batch, "The batch, closed.")}, 404
    ),
)
def close_batch(path: BatchPath) -> Response:
    """Close an open batch"""
    batch_id = path.batch_id
    s = intake.settings()
    owner = current_owner()
    with session_scope(s.database_url) as session:
        _load(session, batch_id, owner)
    _close(batch_id)
    with session_scope(s.database_url) as session:
        return jsonify(batch_to_dict(session, _load(session, batch_id, owner)))


@bp.get(
    "/batches/<batch_id>",
    responses=contract.answers({200: _BATCH, 304: contract.NOT_MODIFIED}, 404),
    openapi_extensions={"parameters": [contract.IF_NONE_MATCH, contract.PREFER_WAIT]},
)
def get_batch(path: BatchPath) -> Response:
    """A batch's status, counts and progress

    One database round trip (the key, the batch and its counts). `If-None-Match` and
    `Prefer: wait=N` work as for a job; a long poll answers once the batch is
    completed (docs/api.md, Polling)."""
    batch_id = path.batch_id
    s = intake.settings()

    def fetch() -> list[Any]:
        query = partial(polls.batch, batch_id=batch_id)
        return polling.read(s.database_url, query, _not_found(batch_id))

    def build(rows: list[Any]) -> polling.Answer:
        counts = polls.batch_counts(rows)
        body = batch_body(rows[0], counts)
        headers = {}
        if body["status"] != BatchStatus.COMPLETED:
            remaining = counts.queued + counts.running
            headers["Retry-After"] = str(pacing.for_batch(s, remaining))
        return polling.Answer(body_etag(body), lambda: body, headers)

    return polling.answer(
        fetch,
        build,
        wait_key=notify.batch_key(batch_id),
        finished=lambda rows: rows[0].status == BatchStatus.COMPLETED,
    )


@bp.delete(
    "/batches/<batch_id>",
    responses=contract.answers({204: contract.no_content("Deleted (or already deleted).")}, 404),
)
def delete_batch(path: BatchPath) -> tuple[str, int]:
    """Delete a batch, its items' results and their audio

    At once and idempotently: a repeat by the same owner answers 204 again; anyone
    else gets the usual 404."""
    batch_id = path.batch_id
    s = intake.settings()
    owner = current_owner()
    with session_scope(s.database_url) as session:
        batch = batches.get_for_owner(session, batch_id, owner)
        if batch is None and retention.was_deleted(session, batch_id, retention.KIND_BATCH, owner):
            return "", 204
        _load(session, batch_id, owner)
        keys, removed = batches.remove(session, batch_id)
        # Only the DELETE whose statement removed the row writes the tombstone, so two
        # at once both answer 204 instead of one failing on the tombstone's key.
        if removed:
            retention.record_deletion(session, batch_id, retention.KIND_BATCH, owner, utcnow())
    # After the commit; workers drop the results of items deleted under them. Whatever
    # a failed storage delete leaves behind, the retention task's orphan pass removes.
    try:
        intake.storage().delete_many(retention.audio_and_spectrograms(keys))
    except Exception as exc:
        log.warning("batch %s deleted; its audio is left to the orphan purge (%s)", batch_id, exc)
    return "", 204


@bp.get(
    "/batches/<batch_id>/items",
    responses=contract.answers(
        {
            200: contract.json_answer(
                schemas.ItemPage,
                "A page of the batch's items.",
                {"Link": contract.LINK, "ETag": contract.ETAG},
            ),
            304: contract.NOT_MODIFIED,
        },
        404,
    ),
    openapi_extensions={"parameters": [contract.IF_NONE_MATCH]},
)
def list_items(path: BatchPath, query: PageQuery) -> Response:
    """A batch's items (as jobs), in upload order

    One database round trip (the key, the batch and the page); `If-None-Match` with
    the page's last `ETag` answers `304` while none of its items changed."""
    batch_id = path.batch_id
    s = intake.settings()
    limit = query.page_size(s.page_size)
    try:
        after = batches.decode_item_cursor(query.cursor)
    except ValueError as exc:
        raise invalid_cursor() from exc

    def fetch() -> list[Any]:
        page = partial(polls.items, batch_id=batch_id, after_seq=after, limit=limit + 1)
        return polling.read(s.database_url, page, _not_found(batch_id))

    def build(rows: list[Any]) -> polling.Answer:
        found = polls.page_items(rows)
        shown = found[:limit]
        next_cursor = batches.encode_item_cursor(found[limit - 1]) if len(found) > limit else None
        notes = known_notes(shown)
        if notes is None:
            with session_scope(s.database_url) as session:
                notes = model_notes(session, shown)
        headers = {}
        if next_cursor:
            query = urlencode({"limit": limit, "cursor": next_cursor})
            headers["Link"] = f'<{request.path}?{query}>; rel="next"'
        return polling.Answer(
            items_etag(shown, notes, next_cursor),
            lambda: {"items": [job_to_dict(j, notes) for j in shown], "next_cursor": next_cursor},
            headers,
        )

    return polling.answer(fetch, build)


def _csv_row(job: Job) -> list[Any]:
    # File names, labels and groups are the uploader's text: no cell may start a
    # spreadsheet formula (tussis/csv_cells.py).
    return safe_row([
        job.path, job.status, job.diagnosis, job.score,
        "" if job.cough_detected is None else str(job.cough_detected).lower(),
        job.cough_score, job.cough_threshold, job.error_code, job.error_message,
        job.model_id, job.model_version, job.label, job.group, job.audio_sha256, job.id,
    ])  # fmt: skip


@bp.get(
    "/batches/<batch_id>/results.csv",
    responses=contract.answers(
        {200: contract.file_answer("text/csv", "One row per item, streamed.")}, 404
    ),
)
def results_csv(path: BatchPath) -> Response:
    """A batch's results as CSV"""
    batch_id = path.batch_id
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
                rows = batches.items_page(session, batch_id, after, 500)
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


@bp.get(
    "/batches",
    responses=contract.answers(
        {
            200: contract.json_answer(
                schemas.BatchPage, "A page of batches.", {"Link": contract.LINK}
            )
        }
    ),
)
def list_batches(query: PageQuery) -> Response:
    """List batches, newest first"""
    s = intake.settings()
    owner = current_owner()
    limit = query.page_size(s.page_size)
    with session_scope(s.database_url) as session:
        try:
            rows = batches.list_for_owner(session, owner, query.cursor or None, limit + 1)
        except ValueError as exc:
            raise invalid_cursor() from exc
        body = [batch_to_dict(session, b) for b in rows[:limit]]
        next_cursor = batches.encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return page_response({"batches": body, "next_cursor": next_cursor}, next_cursor, limit)


def _purged(batch_id: str, why: str) -> ApiError:
    keep = intake.settings().audio_retention
    kept = "forever" if keep is None else f"for {_duration(keep.total_seconds())} after upload"
    return ApiError(
        410,
        "audio_purged",
        f"Batch {batch_id} cannot be rescored: {why}. Rescoring needs the stored recordings, "
        f"which this service keeps {kept} (TUSSIS_AUDIO_RETENTION) unless a DELETE removes "
        "them first; upload the recordings again as a new batch.",
    )


def _duration(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


@bp.post(
    "/batches/<batch_id>/rescore",
    responses=contract.answers(
        {
            202: contract.json_answer(
                schemas.Batch,
                "Accepted: the new batch, linked to the first by `rescored_from`; poll `Location`.",
                {"Location": contract.LOCATION, "Retry-After": contract.RETRY_AFTER},
            ),
            200: contract.json_answer(
                schemas.Batch,
                "A replay of an earlier request with this `Idempotency-Key`: the new batch "
                "as it is now.",
                {"Location": contract.LOCATION, "Idempotent-Replayed": contract.REPLAYED},
            ),
        },
        404,
        409,
        410,
        422,
    ),
    openapi_extensions={
        **contract.multipart(
            "`model`: the model to score the batch's stored recordings with.",
            {"model": contract.MODEL_FIELD},
            [],
        ),
        "parameters": [contract.IDEMPOTENCY_KEY],
    },
)
@idempotent("rescore", replay_batch)
def rescore_batch(path: BatchPath) -> tuple[Response, int, dict[str, str]]:
    """Score a finished batch's stored recordings again with another model

    No upload: a new batch (its own id and `Location`) with the same items (path, label,
    group, sha256), scored with `model`, its `rescored_from` naming this one. The new
    batch holds a copy of the audio, so deleting either batch leaves the other whole.
    `410 audio_purged` once retention or a DELETE removed the recordings."""
    batch_id = path.batch_id
    s = intake.settings()
    owner = current_owner()
    with session_scope(s.database_url) as session:
        batch = batches.get_for_owner(session, batch_id, owner)
        if batch is None and retention.was_deleted(session, batch_id, retention.KIND_BATCH, owner):
            raise _purged(batch_id, "it was deleted, with its recordings")
        first = _load(session, batch_id, owner)
        if first.status != BatchStatus.COMPLETED:
            raise ApiError(
                409,
                "batch_not_finished",
                f"Batch {batch_id} is {first.status}: only a completed batch can be rescored; "
                "wait until it is (GET its Location with `Prefer: wait=N`).",
            )
        items = batches.rescore_items(session, batch_id)
    purged = sum(1 for item in items if item.audio_deleted_at is not None)
    if purged:
        raise _purged(batch_id, f"the recordings of {purged} of its {len(items)} items are deleted")
    model = intake.chosen_model(request.form.get("model"))
    with session_scope(s.database_url) as session:
        new_id = batches.create(session, owner, None, model, rescored_from=batch_id).id
    try:
        _copy_items(batch_id, new_id, owner, items, model)
        _close(new_id)
    except BaseException:
        _forget_batch(new_id)
        raise
    with session_scope(s.database_url) as session:
        body = batch_to_dict(session, _load(session, new_id, owner))
    return (
        jsonify(body),
        202,
        {"Location": batch_url(new_id), "Retry-After": str(_retry_after(body))},
    )


def _copy_items(
    first_id: str, new_id: str, owner: str, items: list[Any], model: intake.Model
) -> None:
    """Store a copy of each item's audio under a new job of ``new_id``, a chunk at a time
    (one read, one write), and queue the chunks on ``model``'s batch queue. A copy, not a
    shared reference: every deletion path (DELETE of a job or batch, retention, the
    orphan pass) stays one owner per stored recording."""
    s = intake.settings()
    size = max(1, s.batch_chunk_size)
    stored = 0
    for start in range(0, len(items), size):
        chunk = items[start : start + size]
        audio = intake.storage().get_many(item.audio_key for item in chunk)
        missing = [item for item in chunk if item.audio_key not in audio]
        if missing:
            raise _purged(first_id, f"the recording of {missing[0].path or missing[0].id} is gone")
        pending = [
            intake.NewJob(
                audio[item.audio_key],
                item.filename,
                item.content_type,
                item.duration_s or 0.0,
                item.audio_sha256,
                item.path,
                item.label,
                item.group,
            )
            for item in chunk
        ]
        ids = intake.store_many(owner, pending, new_id, start + 1, model)  # seqs from 1
        stored += len(ids)
        intake.publish_chunks(ids, model)
    with session_scope(s.database_url) as session:
        batches.add_to_total(session, new_id, stored)
