"""``/api/v1/recordings``: long recordings (hours), counted for coughs.

A recording streams to the recording store (``TUSSIS_RECORDING_STORAGE_URL``) as it
arrives, never whole in memory: the multipart body is parsed as a stream, the
audio part goes straight into a storage writer, and its duration is read from the
container's packets on the way (``TUSSIS_MAX_RECORDING_S``), its size counted
(``TUSSIS_MAX_RECORDING_BYTES``). A refused or broken upload aborts the writer, so
nothing stays behind. Resumable uploads (tus) end in the same :func:`accept`
(api/uploads.py). Every SQL statement lives in ``shared.recordings``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flask import Response, current_app, jsonify, request, stream_with_context
from flask_openapi3 import APIBlueprint
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, File, MultipartDecoder, NeedData
from werkzeug.sansio.multipart import Field as FormField

from api import contract, intake
from api import recording_schemas as schemas
from api.auth import current_owner
from api.errors import ApiError
from api.guards import has_control
from api.idempotency import HEADER as IDEMPOTENCY_HEADER
from api.idempotency import REPLAYED_HEADER, request_key
from api.paging import PageQuery, invalid_cursor, page_response
from api.representation import iso
from shared import idempotency, recordings, retention
from shared.audio import AudioError
from shared.db import session_scope
from shared.long_audio import (
    SAMPLE_RATE,
    PartsReader,
    Pcm,
    StreamReader,
    measure,
    read_pcm,
    wav_file,
)
from shared.queue import publish_recording_work
from shared.storage import AudioNotFound, AudioStorage
from shared.tables import TERMINAL_STATUSES, JobStatus, Recording, utcnow
from tussis.csv_cells import safe_row

log = logging.getLogger(__name__)
bp = APIBlueprint("recordings", __name__, abp_tags=[contract.TAGS["recordings"]])

READ_BYTES = 256 * 1024  # request body read per step
MAX_FIELD_BYTES = 4096  # label, recorded_at
MAX_CLIP_S = 60.0  # the longest span GET .../audio plays back
ROUTE = "recordings"  # Idempotency-Key scope
_FIELDS = ("recorded_at", "label")


class RecordingPath(BaseModel):
    recording_id: str = Field(description="A recording's `id`.")


class ClipQuery(BaseModel):
    start_s: float = Field(ge=0, le=10**6, description="Seconds from the recording's start.")
    end_s: float = Field(
        gt=0,
        le=10**6,
        description=f"Seconds from the start; at most {MAX_CLIP_S:g} s after `start_s`.",
    )


def storage() -> AudioStorage:
    return current_app.extensions["tussis.recording_storage"]


def recording_url(recording_id: str) -> str:
    return f"/api/v1/recordings/{recording_id}"


def _not_found(recording_id: str) -> ApiError:
    return ApiError(404, "recording_not_found", f"There is no recording {recording_id}.")


def _owned(session: Session, recording_id: str, owner: str) -> Recording:
    row = recordings.get_for_owner(session, recording_id, owner)
    if row is None:
        raise _not_found(recording_id)
    return row


def to_dict(session: Session, row: Recording) -> dict[str, Any]:
    progress = recordings.progress(session, row.id)
    total = progress.segments_total
    fraction = progress.segments_done / total if total else 0.0
    if row.status == JobStatus.SUCCEEDED:
        fraction = 1.0
    url = recording_url(row.id)
    error = None
    if row.status == JobStatus.FAILED:
        error = {"code": row.error_code, "message": row.error_message}
    body = {
        "id": row.id,
        "status": row.status,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "finished_at": iso(row.finished_at),
        "audio_deleted_at": iso(row.audio_deleted_at),
        "label": row.label,
        "recorded_at": iso(row.recorded_at),
        "audio": {
            "filename": row.filename,
            "content_type": row.content_type,
            "size_bytes": row.size_bytes,
            "sha256": row.audio_sha256,
            "duration_s": row.duration_s,
        },
        "progress": {
            "segments_done": progress.segments_done,
            "segments_total": total,
            "fraction": round(fraction, 4),
        },
        "result": row.result if row.status == JobStatus.SUCCEEDED else None,
        "error": error,
        "links": {
            "self": url,
            "events": f"{url}/events",
            "events_csv": f"{url}/events.csv",
            "timeline": f"{url}/timeline.png",
            "audio": f"{url}/audio",
        },
    }
    return schemas.Recording.model_validate(body).model_dump(
        mode="json", by_alias=True, exclude_unset=True
    )


def _answer(row_id: str, owner: str, status: int = 200) -> Response:
    s = intake.settings()
    with session_scope(s.database_url) as session:
        body = to_dict(session, _owned(session, row_id, owner))
    response = jsonify(body)
    response.status_code = status
    if body["status"] not in TERMINAL_STATUSES:
        response.headers["Retry-After"] = str(s.retry_after_s)
    return response


# --- accepting a recording -----------------------------------------------------------------


@dataclass
class Details:
    """What the client said about a recording besides its bytes."""

    filename: str | None = None
    content_type: str | None = None
    label: str | None = None
    recorded_at: datetime | None = None
    fields: dict[str, str] = field(default_factory=dict)


def parse_details(details: Details) -> Details:
    """Check the label and start time; 400 with a sentence for either."""
    label = details.fields.get("label")
    if label is not None:
        label = label.strip() or None
        if label and (has_control(label) or len(label) > 255):
            raise ApiError(
                400,
                "invalid_label",
                "The label must be at most 255 characters without control characters.",
            )
    recorded_at = None
    text = (details.fields.get("recorded_at") or "").strip()
    if text:
        try:
            recorded_at = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            recorded_at = None
        if recorded_at is None or recorded_at.tzinfo is None or not text.isascii():
            raise ApiError(
                400,
                "invalid_recorded_at",
                "'recorded_at' must be an ISO 8601 time with its offset, such as "
                "2026-12-05T22:40:00+01:00 or 2026-12-05T21:40:00Z.",
            )
    details.label, details.recorded_at = label, recorded_at
    details.filename = intake.checked_filename(details.filename)
    details.content_type = intake.recorded_content_type(details.content_type)
    return details


def too_large() -> ApiError:
    limit = intake.settings().max_recording_bytes
    return ApiError(
        413,
        "upload_too_large",
        f"The recording is larger than the {limit / 1024**3:g} GiB limit "
        "(TUSSIS_MAX_RECORDING_BYTES); split it and send the parts.",
        {"Connection": "close"},
    )


def _audio_error(exc: AudioError) -> ApiError:
    return ApiError(422, exc.code, exc.message)


def _multipart_audio(details: Details) -> Iterator[bytes]:
    """The bytes of the ``audio`` part as they arrive; other fields go into ``details``."""
    kind, options = parse_options_header(request.headers.get("Content-Type", ""))
    if kind != "multipart/form-data" or not options.get("boundary"):
        raise ApiError(
            400,
            "missing_audio",
            "Send the recording as a multipart/form-data file field named 'audio'.",
        )
    decoder = MultipartDecoder(
        options["boundary"].encode("latin-1"), max_form_memory_size=2 * READ_BYTES, max_parts=16
    )
    stream = request.stream
    part: tuple[str, str, bytearray] | None = None
    audio_seen = False
    while True:
        try:
            chunk = stream.read(READ_BYTES)
        except ClientDisconnected as exc:
            raise ApiError(
                400, "bad_request", "The upload broke off before it was complete."
            ) from exc
        decoder.receive_data(chunk or None)
        try:
            event = decoder.next_event()
        except ValueError as exc:
            raise _not_a_form() from exc
        while not isinstance(event, NeedData):
            if isinstance(event, File):
                if event.name != "audio" or audio_seen:
                    part = ("skip", event.name, bytearray())
                else:
                    audio_seen = True
                    details.filename = event.filename or None
                    details.content_type = event.headers.get("Content-Type")
                    part = ("audio", event.name, bytearray())
            elif isinstance(event, FormField):
                part = ("field", event.name, bytearray())
            elif isinstance(event, Data) and part is not None:
                role, name, buffer = part
                if role == "audio" and event.data:
                    yield bytes(event.data)
                elif role == "field" and name in _FIELDS:
                    buffer += event.data
                    if len(buffer) > MAX_FIELD_BYTES:
                        raise ApiError(400, f"invalid_{name}", f"The field '{name}' is too long.")
                if not event.more_data:
                    if role == "field" and name in _FIELDS:
                        details.fields[name] = buffer.decode("utf-8", "replace")
                    part = None
            elif isinstance(event, Epilogue):
                if not audio_seen:
                    raise ApiError(
                        400,
                        "missing_audio",
                        "Send the recording as a multipart/form-data file field named 'audio'.",
                    )
                return
            try:
                event = decoder.next_event()
            except ValueError as exc:
                raise _not_a_form() from exc
        if not chunk:
            raise _not_a_form()


def _not_a_form() -> ApiError:
    return ApiError(
        400,
        "bad_request",
        "The upload broke off before it was complete, or is not a well-formed "
        "multipart/form-data body.",
    )


@dataclass
class Stored:
    key: str
    size: int
    sha256: str
    duration_s: float


def stream_to_store(chunks: Iterator[bytes], key: str) -> Stored:
    """Write ``chunks`` under ``key`` while counting bytes and reading the duration from
    the container's packets. Nothing stays stored when this raises."""
    s = intake.settings()
    digest = hashlib.sha256()
    size = 0
    store = storage()
    with store.open_write(key) as writer:
        broken: list[BaseException] = []

        def tee() -> Iterator[bytes]:
            nonlocal size
            try:
                for chunk in chunks:
                    size += len(chunk)
                    if size > s.max_recording_bytes:
                        raise too_large()
                    digest.update(chunk)
                    writer.write(chunk)
                    yield chunk
            except BaseException as exc:
                # The body's own failure (too large, cut off, not a form) must not pass
                # for the audio's: the container reader would take it for damaged audio.
                broken.append(exc)
                raise

        reader = StreamReader(tee())
        duration: float | None = None
        try:
            duration = measure(reader, s.max_recording_s)
        except AudioError as exc:
            if broken:
                raise broken[0] from None
            if exc.code == "audio_too_long":
                raise _audio_error(exc) from exc
            # Some containers cannot be read front to back (an M4A with its index at the
            # end): stored whole, they are read again with seeks below.
        if broken:
            raise broken[0]
        reader.drain()
        writer.commit()
    if duration is None:
        try:
            duration = measure(PartsReader(store, [[key, size]]), s.max_recording_s)
        except AudioError as exc:
            store.delete(key)
            raise _audio_error(exc) from exc
    return Stored(key, size, digest.hexdigest(), duration)


def fingerprint(details: Details, sha256: str) -> str:
    """What defines a recording request, for ``Idempotency-Key``: the audio's digest, its
    name and type, and the fields."""
    outer = hashlib.sha256()
    for value in (
        sha256,
        details.filename or "",
        details.content_type or "",
        *(f"{k}={details.fields[k]}" for k in sorted(details.fields)),
    ):
        data = value.encode("utf-8", "surrogatepass")
        outer.update(len(data).to_bytes(8, "big") + data)
    return outer.hexdigest()


def accept(
    owner: str,
    details: Details,
    recording_id: str,
    parts: list[list[Any]],
    sha256: str,
    size: int,
    duration_s: float | None,
) -> str:
    """Commit the recording and its decoding pass, then queue the pass; the stored parts
    are the recording's from here on."""
    s = intake.settings()
    with session_scope(s.database_url) as session:
        job_id = recordings.create(
            session,
            recording_id=recording_id,
            owner=owner,
            filename=details.filename,
            content_type=details.content_type,
            size_bytes=size,
            sha256=sha256,
            audio_parts=parts,
            duration_s=duration_s,
            label=details.label,
            recorded_at=details.recorded_at,
        )
    try:
        publish_recording_work(current_app.extensions["celery"], s, [job_id])
    except Exception as exc:
        log.warning("recording %s accepted; the sweeper will queue it (%s)", recording_id, exc)
        intake.leave_to_the_sweeper([job_id])
    return recording_id


@bp.post(
    "/recordings",
    responses=contract.answers(
        {
            202: contract.json_answer(
                schemas.Recording,
                "Accepted: stored and queued; poll `Location`.",
                {"Location": contract.LOCATION, "Retry-After": contract.RETRY_AFTER},
            ),
            200: contract.json_answer(
                schemas.Recording,
                "A replay of an earlier request with this `Idempotency-Key`.",
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
            "The recording as the file field `audio` (streamed: hours of audio, up to "
            "`TUSSIS_MAX_RECORDING_BYTES`), with optional `recorded_at` and `label`.",
            {
                "audio": contract.FILE,
                "recorded_at": {
                    "type": "string",
                    "description": "When the recording started (ISO 8601 with its offset): "
                    "hourly counts are then per clock hour.",
                },
                "label": {"type": "string", "description": "Your name for it (255 at most)."},
            },
            ["audio"],
        ),
        "parameters": [contract.IDEMPOTENCY_KEY],
    },
)
def submit_recording() -> Response:
    """Submit a long recording"""
    s = intake.settings()
    owner = current_owner()
    key_header = request_key()
    declared = request.content_length
    if declared is not None and declared > s.max_recording_bytes + 64 * 1024:
        raise too_large()
    # The app's body limit is the clips'; this route's is the recordings' (None would fall
    # back to the app's), and the audio itself is counted as it streams.
    request.max_content_length = s.max_recording_bytes + 64 * 1024
    recording_id = recordings.new_id()
    details = Details()
    try:
        stored = stream_to_store(_multipart_audio(details), recordings.audio_key(recording_id))
    except RequestEntityTooLarge as exc:
        raise too_large() from exc
    try:
        parse_details(details)
        if key_header is not None:
            replay = _claim_key(owner, key_header, fingerprint(details, stored.sha256))
            if replay is not None:
                storage().delete(stored.key)
                return replay
        accept(
            owner,
            details,
            recording_id,
            [[stored.key, stored.size]],
            stored.sha256,
            stored.size,
            stored.duration_s,
        )
    except BaseException:
        storage().delete(stored.key)
        if key_header is not None:
            _release_key(owner, key_header)
        raise
    if key_header is not None:
        _complete_key(owner, key_header, recording_id)
    response = _answer(recording_id, owner, 202)
    response.headers["Location"] = recording_url(recording_id)
    return response


def _claim_key(owner: str, key: str, print_: str) -> Response | None:
    with session_scope(intake.settings().database_url) as session:
        claim = idempotency.claim(session, owner, ROUTE, key, print_)
    if claim.outcome is idempotency.Outcome.MISMATCH:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"This {IDEMPOTENCY_HEADER} was already used for a different request; "
            "send a new key with a new request.",
        )
    if claim.outcome is idempotency.Outcome.IN_PROGRESS:
        raise ApiError(
            409,
            "idempotency_key_in_use",
            f"A request with this {IDEMPOTENCY_HEADER} is still being processed; "
            "retry in a moment to get its result.",
            {"Retry-After": "1"},
        )
    if claim.outcome is idempotency.Outcome.REPLAY and claim.resource_id:
        response = _answer(claim.resource_id, owner)
        response.headers["Location"] = recording_url(claim.resource_id)
        response.headers[REPLAYED_HEADER] = "true"
        return response
    return None


def _release_key(owner: str, key: str) -> None:
    try:
        with session_scope(intake.settings().database_url) as session:
            idempotency.release(session, owner, ROUTE, key)
    except Exception:
        log.exception("could not release Idempotency-Key claim (%s)", owner)


def _complete_key(owner: str, key: str, recording_id: str) -> None:
    try:
        with session_scope(intake.settings().database_url) as session:
            idempotency.complete(session, owner, ROUTE, key, recording_id)
    except Exception:
        log.exception("could not record Idempotency-Key for recording %s", recording_id)


# --- reading ------------------------------------------------------------------------------

_RECORDING = contract.json_answer(
    schemas.Recording, "The recording.", {"Retry-After": contract.RETRY_AFTER}
)


@bp.get("/recordings/<recording_id>", responses=contract.answers({200: _RECORDING}, 404))
def get_recording(path: RecordingPath) -> Response:
    """A recording's status, progress and, once counted, its result"""
    return _answer(path.recording_id, current_owner())


@bp.get(
    "/recordings",
    responses=contract.answers(
        {
            200: contract.json_answer(
                schemas.RecordingPage, "A page of recordings.", {"Link": contract.LINK}
            )
        }
    ),
)
def list_recordings(query: PageQuery) -> Response:
    """List recordings, newest first"""
    s = intake.settings()
    owner = current_owner()
    limit = query.page_size(s.page_size)
    with session_scope(s.database_url) as session:
        try:
            rows = recordings.list_for_owner(session, owner, query.cursor or None, limit + 1)
        except ValueError as exc:
            raise invalid_cursor() from exc
        body = [to_dict(session, r) for r in rows[:limit]]
        next_cursor = recordings.encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return page_response({"recordings": body, "next_cursor": next_cursor}, next_cursor, limit)


@bp.delete(
    "/recordings/<recording_id>",
    responses=contract.answers({204: contract.no_content("Deleted (or already deleted).")}, 404),
)
def delete_recording(path: RecordingPath) -> tuple[str, int]:
    """Delete a recording, its audio, its events and its result

    At once and idempotently, as for jobs: a repeat by the same owner answers 204."""
    recording_id = path.recording_id
    s = intake.settings()
    owner = current_owner()
    kind = recordings.KIND_RECORDING
    with session_scope(s.database_url) as session:
        row = recordings.get_for_owner(session, recording_id, owner)
        if row is None and retention.was_deleted(session, recording_id, kind, owner):
            return "", 204
        _owned(session, recording_id, owner)
        keys, removed = recordings.remove(session, recording_id)
        if removed:
            retention.record_deletion(session, recording_id, kind, owner, utcnow())
    # After the commit: a worker still on it finds its rows gone and drops its work; what
    # a failed delete leaves is removed by the retention task's orphan pass.
    try:
        storage().delete_many(keys)
    except Exception as exc:
        log.warning(
            "recording %s deleted; its audio is left to the orphan purge (%s)", recording_id, exc
        )
    return "", 204


def _counted(session: Session, recording_id: str, owner: str) -> Recording:
    row = _owned(session, recording_id, owner)
    if row.status != JobStatus.SUCCEEDED:
        raise ApiError(
            409,
            "recording_not_counted",
            f"The recording is {row.status}; its events are there once it has succeeded.",
            {"Retry-After": str(intake.settings().retry_after_s)},
        )
    return row


@bp.get(
    "/recordings/<recording_id>/events",
    responses=contract.answers(
        {
            200: contract.json_answer(
                schemas.EventPage, "A page of cough events, in time order.", {"Link": contract.LINK}
            )
        },
        404,
        409,
    ),
)
def list_events(path: RecordingPath, query: PageQuery) -> Response:
    """A counted recording's cough events"""
    s = intake.settings()
    limit = query.page_size(s.page_size)
    try:
        after = recordings.decode_event_cursor(query.cursor)
    except ValueError as exc:
        raise invalid_cursor() from exc
    with session_scope(s.database_url) as session:
        _counted(session, path.recording_id, current_owner())
        rows = recordings.events_page(session, path.recording_id, after, limit + 1)
    events = [{"start_s": e.start_s, "end_s": e.end_s, "score": e.score} for e in rows[:limit]]
    next_cursor = recordings.encode_event_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    return page_response({"events": events, "next_cursor": next_cursor}, next_cursor, limit)


CSV_COLUMNS = ["start_s", "end_s", "score", "start_time"]


@bp.get(
    "/recordings/<recording_id>/events.csv",
    responses=contract.answers(
        {200: contract.file_answer("text/csv", "One row per event, streamed.")}, 404, 409
    ),
)
def events_csv(path: RecordingPath) -> Response:
    """A counted recording's events as CSV"""
    s = intake.settings()
    recording_id = path.recording_id
    with session_scope(s.database_url) as session:
        started = _counted(session, recording_id, current_owner()).recorded_at

    def generate() -> Iterator[str]:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(CSV_COLUMNS)
        rows = recordings.iter_events(lambda: session_scope(s.database_url), recording_id)
        for count, event in enumerate(rows, start=1):
            clock = iso(started + timedelta(seconds=event.start_s)) if started else ""
            # Numbers and times only, but through the one rule for every CSV cell.
            writer.writerow(safe_row([event.start_s, event.end_s, event.score, clock]))
            if count % 1000 == 0:
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()
        yield buf.getvalue()

    response = Response(stream_with_context(generate()), mimetype="text/csv")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="tussis-{recording_id}-events.csv"'
    )
    return response


@bp.get(
    "/recordings/<recording_id>/timeline.png",
    responses=contract.answers(
        {200: contract.file_answer("image/png", "Coughs per 10 minutes and per hour.")}, 404, 409
    ),
)
def timeline(path: RecordingPath) -> Response:
    """A counted recording's timeline (PNG)"""
    s = intake.settings()
    with session_scope(s.database_url) as session:
        _counted(session, path.recording_id, current_owner())
    # Drawn once by the worker that completed the recording (matplotlib never loads in
    # an API process), in the same step that recorded the result.
    try:
        png = storage().get(recordings.timeline_key(path.recording_id))
    except AudioNotFound as exc:
        raise ApiError(
            404, "timeline_not_found", "The recording's timeline is not available."
        ) from exc
    response = Response(png, mimetype="image/png")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


@bp.get(
    "/recordings/<recording_id>/audio",
    responses=contract.answers(
        {200: contract.file_answer("audio/wav", "The span as 16 kHz mono WAV.")}, 404, 409
    ),
)
def clip(path: RecordingPath, query: ClipQuery) -> Response:
    """A short span of a recording, to check an event by ear"""
    s = intake.settings()
    if not query.start_s < query.end_s <= query.start_s + MAX_CLIP_S:
        raise ApiError(
            400,
            "invalid_span",
            f"'end_s' must be after 'start_s' and at most {MAX_CLIP_S:g} s after it.",
        )
    with session_scope(s.database_url) as session:
        row = _owned(session, path.recording_id, current_owner())
        deleted, offset, samples = row.audio_deleted_at, row.pcm_offset, row.samples
        parts = recordings.pcm_parts(row)
    if deleted is not None:
        raise ApiError(
            404,
            "audio_deleted",
            "The recording's audio was deleted after the retention period; its result is "
            "still available.",
        )
    if offset is None or samples is None:
        raise ApiError(
            409,
            "recording_not_decoded",
            "The recording has not been decoded yet; ask again once it is running.",
            {"Retry-After": str(s.retry_after_s)},
        )
    start = int(query.start_s * SAMPLE_RATE)
    count = int((query.end_s - query.start_s) * SAMPLE_RATE)
    try:
        data = read_pcm(storage(), Pcm(parts, offset, int(samples)), start, count)
    except AudioNotFound as exc:
        raise ApiError(404, "audio_deleted", "The recording's audio is no longer stored.") from exc
    response = Response(wav_file(data), mimetype="audio/wav")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response
