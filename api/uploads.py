"""``/api/v1/uploads``: resumable uploads of long recordings, by the tus protocol 1.0
(https://tus.io/protocols/resumable-upload: core, and the creation and termination
extensions), the protocol tusd, Uppy and tuspy speak.

- ``POST /uploads`` with ``Upload-Length`` (and ``Upload-Metadata``: ``filename``,
  ``filetype``, ``label``, ``recorded_at``) creates an upload: ``201`` and its
  ``Location``.
- ``HEAD /uploads/{id}`` says how many bytes arrived (``Upload-Offset``), so a client
  whose connection dropped resumes from there without sending them again.
- ``PATCH /uploads/{id}`` (``application/offset+octet-stream``, ``Upload-Offset``)
  appends bytes. Each PATCH streams into a part of its own in the recording store;
  a PATCH cut off mid-way keeps what arrived. The PATCH that completes the upload
  checks it like ``POST /recordings`` does and turns it into a recording:
  ``Tussis-Recording`` names it (on that answer and on ``HEAD`` from then on).
- ``DELETE /uploads/{id}`` abandons an unfinished upload and its bytes.

No library serves tus from Flask with a storage interface like ours (tusd is a Go
server; the Python servers are tied to other frameworks and to local files), and the
protocol's core is a handful of headers, so it is written here; the client side uses
``tuspy``. Unfinished uploads are deleted ``TUSSIS_UPLOAD_RETENTION`` after their
last byte (``shared.retention``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import uuid
from typing import Any

from flask import Response, jsonify, request
from flask_openapi3 import APIBlueprint
from pydantic import BaseModel, Field
from sqlalchemy import update
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from api import contract, intake
from api.auth import current_owner
from api.errors import ApiError
from api.recordings import (
    READ_BYTES,
    Details,
    accept,
    parse_details,
    recording_url,
    storage,
    too_large,
)
from shared import recordings
from shared.audio import AudioError
from shared.db import affected, session_scope
from shared.long_audio import PartsReader, measure
from shared.tables import Upload, utcnow

log = logging.getLogger(__name__)
bp = APIBlueprint("uploads", __name__, abp_tags=[contract.TAGS["uploads"]])

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination"
OCTET_STREAM = "application/offset+octet-stream"
RECORDING_HEADER = "Tussis-Recording"
_META_KEYS = ("filename", "filetype", "label", "recorded_at")


class UploadPath(BaseModel):
    upload_id: str = Field(description="An upload's id (the last part of its `Location`).")


class UploadState(BaseModel):
    id: str
    offset: int
    length: int
    recording: str | None = Field(description="The recording's URL once the upload is complete.")


@bp.after_request
def _discovery(response: Response) -> Response:
    """tus discovery: an ``OPTIONS`` request (answered by Flask itself) says the
    protocol version, the extensions and the largest upload."""
    if request.method == "OPTIONS" and response.status_code < 300:
        response.headers["Tus-Resumable"] = TUS_VERSION
        response.headers["Tus-Version"] = TUS_VERSION
        response.headers["Tus-Extension"] = TUS_EXTENSIONS
        response.headers["Tus-Max-Size"] = str(intake.settings().max_recording_bytes)
    return response


def _tus(response: Response) -> Response:
    response.headers["Tus-Resumable"] = TUS_VERSION
    response.headers["Cache-Control"] = "no-store"
    return response


def _check_version() -> None:
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise ApiError(
            412,
            "tus_version_unsupported",
            f"Send 'Tus-Resumable: {TUS_VERSION}': this server speaks tus {TUS_VERSION}.",
            {"Tus-Version": TUS_VERSION, "Tus-Resumable": TUS_VERSION},
        )


def _metadata(header: str) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs."""
    meta: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in header.split(","))):
        key, _, value = item.partition(" ")
        try:
            text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ApiError(
                400,
                "invalid_upload_metadata",
                "Upload-Metadata must be comma-separated 'key base64(value)' pairs of UTF-8.",
            ) from exc
        if key in _META_KEYS:
            meta[key] = text[:4096]
    return meta


def _details(meta: dict[str, Any]) -> Details:
    details = Details(
        filename=meta.get("filename"),
        content_type=meta.get("filetype"),
        fields={k: str(meta[k]) for k in ("label", "recorded_at") if meta.get(k)},
    )
    return parse_details(details)


def _load(upload_id: str, owner: str) -> Upload:
    with session_scope(intake.settings().database_url) as session:
        row = session.get(Upload, upload_id)
    if row is None or row.owner != owner:
        raise ApiError(404, "upload_not_found", f"There is no upload {upload_id}.")
    return row


def _state_headers(row: Upload) -> dict[str, str]:
    headers = {"Upload-Offset": str(row.offset), "Upload-Length": str(row.length)}
    if row.recording_id:
        headers[RECORDING_HEADER] = recording_url(row.recording_id)
    return headers


@bp.post(
    "/uploads",
    responses=contract.answers(
        {
            201: {
                "description": "Created: send the bytes to `Location` with PATCH.",
                "headers": {"Location": contract.LOCATION},
            }
        },
        412,
        413,
    ),
    openapi_extensions={
        "parameters": [
            {
                "name": "Upload-Length",
                "in": "header",
                "required": True,
                "description": "The whole upload's size in bytes.",
                "schema": {"type": "integer", "minimum": 1},
            },
            {
                "name": "Upload-Metadata",
                "in": "header",
                "required": False,
                "description": "`filename`, `filetype`, `label`, `recorded_at`, each base64.",
                "schema": {"type": "string"},
            },
            {
                "name": "Tus-Resumable",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "enum": [TUS_VERSION]},
            },
        ]
    },
)
def create_upload() -> Response:
    """Start a resumable upload (tus creation)"""
    _check_version()
    s = intake.settings()
    owner = current_owner()
    text = request.headers.get("Upload-Length", "")
    if not text.isascii() or not text.isdigit() or len(text) > 15 or int(text) < 1:
        raise ApiError(
            400,
            "invalid_upload_length",
            "Send the upload's size in bytes as Upload-Length (deferred lengths are not "
            "supported).",
        )
    length = int(text)
    if length > s.max_recording_bytes:
        raise too_large()
    meta = _metadata(request.headers.get("Upload-Metadata", ""))
    _details(meta)  # a bad label or start time is refused now, before any byte is sent
    upload_id = str(uuid.uuid4())
    now = utcnow()
    with session_scope(s.database_url) as session:
        session.add(
            Upload(
                id=upload_id,
                owner=owner,
                length=length,
                offset=0,
                meta=meta,
                parts=[],
                created_at=now,
                updated_at=now,
            )
        )
    response = jsonify({"id": upload_id, "offset": 0, "length": length, "recording": None})
    response.status_code = 201
    response.headers["Location"] = f"/api/v1/uploads/{upload_id}"
    return _tus(response)


@bp.get(
    "/uploads/<upload_id>",
    responses=contract.answers(
        {
            200: {
                "description": "How much arrived (also as `HEAD`, the tus way).",
                "headers": {
                    "Upload-Offset": contract.RETRY_AFTER | {"description": "Bytes received."},
                    "Upload-Length": contract.RETRY_AFTER | {"description": "Bytes in all."},
                },
                "content": {"application/json": {"schema": contract.ref(UploadState)}},
            }
        },
        404,
    ),
)
def upload_state(path: UploadPath) -> Response:
    """How much of a resumable upload arrived (tus HEAD)"""
    row = _load(path.upload_id, current_owner())
    response = jsonify(
        {
            "id": row.id,
            "offset": row.offset,
            "length": row.length,
            "recording": recording_url(row.recording_id) if row.recording_id else None,
        }
    )
    response.headers.update(_state_headers(row))
    return _tus(response)


@bp.patch(
    "/uploads/<upload_id>",
    responses=contract.answers(
        {204: {"description": "Stored; `Upload-Offset` is the new offset."}},
        404,
        409,
        412,
        413,
        415,
        422,
    ),
    openapi_extensions={
        "requestBody": {
            "required": True,
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        },
        "parameters": [
            {
                "name": "Upload-Offset",
                "in": "header",
                "required": True,
                "description": "Where these bytes start: the offset `HEAD` reported.",
                "schema": {"type": "integer", "minimum": 0},
            },
            {
                "name": "Tus-Resumable",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "enum": [TUS_VERSION]},
            },
        ],
    },
)
def append(path: UploadPath) -> Response:
    """Send bytes of a resumable upload (tus PATCH)"""
    _check_version()
    owner = current_owner()
    if request.mimetype != OCTET_STREAM:
        raise ApiError(
            415, "unsupported_media_type", f"A tus PATCH carries Content-Type: {OCTET_STREAM}."
        )
    row = _load(path.upload_id, owner)
    given = request.headers.get("Upload-Offset", "")
    if not given.isascii() or not given.isdigit() or int(given) != row.offset:
        raise ApiError(
            409,
            "upload_offset_mismatch",
            f"This upload has {row.offset} bytes; send Upload-Offset: {row.offset} "
            "(ask with HEAD after a broken connection).",
            {"Upload-Offset": str(row.offset)},
        )
    if row.recording_id or row.offset >= row.length:
        raise ApiError(409, "upload_finished", "This upload is complete; nothing more to send.")
    # The clips' body limit is the app's. Under a server that marks its input terminated
    # (gunicorn), Werkzeug refuses a read once the limit is reached, even the read that
    # finds the end: one byte of room, so a PATCH of exactly what is left goes through.
    request.max_content_length = row.length - row.offset + 1
    too_many = ApiError(
        413,
        "upload_too_large",
        f"More bytes than the {row.length} this upload declared.",
        {"Connection": "close"},
    )
    try:
        stream = request.stream
    except RequestEntityTooLarge as exc:
        raise too_many from exc
    key = recordings.upload_part_key(row.id, row.offset)
    room = row.length - row.offset
    received = 0
    broken = False
    with storage().open_write(key) as writer:
        while True:
            try:
                chunk = stream.read(READ_BYTES)
            except RequestEntityTooLarge as exc:
                raise too_many from exc
            except ClientDisconnected:
                broken = True  # keep what arrived: the client resumes from there
                break
            if not chunk:
                break
            received += len(chunk)
            if received > room:
                raise too_many
            writer.write(chunk)
        if received == 0:
            writer.abort()
        else:
            writer.commit()
    if received == 0:
        return _tus(_no_content(_state_headers(row)))
    new_offset = row.offset + received
    with session_scope(intake.settings().database_url) as session:
        won = affected(
            session.execute(
                update(Upload)
                .where(Upload.id == row.id, Upload.offset == row.offset)
                .values(offset=new_offset, parts=[*row.parts, [key, received]], updated_at=utcnow())
            )
        )
    if not won:
        storage().delete(key)
        raise ApiError(
            409, "upload_offset_mismatch", "Another request appended to this upload first."
        )
    row.offset, row.parts = new_offset, [*row.parts, [key, received]]
    if broken:
        return _tus(_no_content(_state_headers(row)))
    if row.offset == row.length:
        _finish(row)
    return _tus(_no_content(_state_headers(row)))


def _no_content(headers: dict[str, str]) -> Response:
    response = Response(status=204)
    response.headers.update(headers)
    return response


def _finish(row: Upload) -> None:
    """The complete upload becomes a recording, checked as a POSTed one is; a refused one
    is deleted with its bytes."""
    s = intake.settings()
    store = storage()
    try:
        details = _details(row.meta)
        duration = measure(PartsReader(store, row.parts), s.max_recording_s)
    except (AudioError, ApiError) as exc:
        _discard(row)
        if isinstance(exc, AudioError):
            raise ApiError(422, exc.code, exc.message) from exc
        raise
    digest = hashlib.sha256()
    reader = PartsReader(store, row.parts)
    while block := reader.read(8 * READ_BYTES):
        digest.update(block)
    recording_id = recordings.new_id()
    with session_scope(s.database_url) as session:
        claimed = affected(
            session.execute(
                update(Upload)
                .where(Upload.id == row.id, Upload.recording_id.is_(None))
                .values(recording_id=recording_id, updated_at=utcnow())
            )
        )
    if not claimed:
        return
    accept(row.owner, details, recording_id, row.parts, digest.hexdigest(), row.length, duration)
    row.recording_id = recording_id


def _discard(row: Upload) -> None:
    with session_scope(intake.settings().database_url) as session:
        session.query(Upload).filter(Upload.id == row.id, Upload.recording_id.is_(None)).delete()
    storage().delete_many([str(k) for k, _ in row.parts])


@bp.delete(
    "/uploads/<upload_id>",
    responses=contract.answers(
        {204: {"description": "Terminated: the upload and its bytes are gone."}}, 404, 409, 412
    ),
)
def terminate(path: UploadPath) -> Response:
    """Abandon a resumable upload (tus termination)"""
    _check_version()
    row = _load(path.upload_id, current_owner())
    if row.recording_id:
        raise ApiError(
            409,
            "upload_finished",
            "This upload became a recording; delete the recording instead.",
        )
    _discard(row)
    return _tus(_no_content({}))
