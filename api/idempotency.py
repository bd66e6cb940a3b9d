"""``Idempotency-Key`` on the creating POSTs (``/jobs``, ``/batches``): a retried
request gets the resource the first one created instead of a second one.

- A key is 1-255 printable ASCII characters, scoped to the caller and the route, and
  kept 24 h (``shared.idempotency``).
- The request is fingerprinted (SHA-256 over its form fields and its files' names,
  types and contents); the same key with another fingerprint is refused with 422.
- The key is claimed (committed) before any work; a concurrent request with the same
  key meanwhile gets 409 with ``Retry-After: 1``.
- A replay answers 200 with the resource as it is now and ``Idempotent-Replayed: true``
  (not the original 202 body: the job or batch has moved on, and a batch's per-file
  report of that request is not kept).
- A request that is refused (any non-2xx answer) or fails releases its key: only a
  created resource is worth replaying, and a corrected retry can reuse the key.

See docs/api.md, "Idempotent submissions".
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any, ParamSpec

from flask import Response, current_app, jsonify, request
from werkzeug.datastructures import FileStorage

from api import intake, pacing
from api.auth import current_owner
from api.errors import ApiError
from api.representation import batch_to_dict, batch_url, job_to_dict, job_url, model_notes
from shared import batches, jobs
from shared import idempotency as keys
from shared.db import session_scope
from shared.tables import BatchStatus, JobStatus

log = logging.getLogger(__name__)
P = ParamSpec("P")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_CHUNK = 1024 * 1024


def request_key() -> str | None:
    """The request's ``Idempotency-Key``, or None without one; 400 if malformed."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    if not _VALID_KEY.fullmatch(raw):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"The {HEADER} header must be 1 to 255 printable ASCII characters.",
        )
    return raw


def _file_digest(upload: FileStorage) -> str:
    """SHA-256 of an uploaded file, read in chunks (batch parts can be large) and
    rewound, so the handler reads it again from the start."""
    stream = upload.stream
    stream.seek(0)
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    stream.seek(0)
    return digest.hexdigest()


def request_fingerprint() -> str:
    """SHA-256 over what defines the request: every form field (by name, values in
    order) and every file (by field, in order: name, type, content digest). Parts are
    length-prefixed so that no two different requests encode alike."""
    outer = hashlib.sha256()

    def put(value: str) -> None:
        data = value.encode("utf-8", "surrogatepass")
        outer.update(len(data).to_bytes(8, "big"))
        outer.update(data)

    for name, values in sorted(request.form.lists()):
        put("field")
        put(name)
        for value in values:
            put(value)
    for name, uploads in sorted(request.files.lists()):
        put("file")
        put(name)
        for upload in uploads:
            put(upload.filename or "")
            put(upload.mimetype or "")
            put(_file_digest(upload))
    return outer.hexdigest()


# --- replays: the resource as it is now --------------------------------------------------


def replay_job(owner: str, job_id: str) -> Response:
    with session_scope(intake.settings().database_url) as session:
        job = jobs.get_for_owner(session, job_id, owner)
        if job is None:
            raise ApiError(
                404, "job_not_found", f"The job {job_id} created with this key no longer exists."
            )
        body = job_to_dict(job, model_notes(session, [job]))
    response = jsonify(body)
    response.headers["Location"] = job_url(job_id)
    if body["status"] in (JobStatus.QUEUED, JobStatus.RUNNING):
        response.headers["Retry-After"] = str(pacing.for_job(intake.settings(), body["status"], 0))
    return response


def replay_batch(owner: str, batch_id: str) -> Response:
    with session_scope(intake.settings().database_url) as session:
        batch = batches.get_for_owner(session, batch_id, owner)
        if batch is None:
            raise ApiError(
                404,
                "batch_not_found",
                f"The batch {batch_id} created with this key no longer exists.",
            )
        body = batch_to_dict(session, batch)
    response = jsonify(body)
    response.headers["Location"] = batch_url(batch_id)
    if body["status"] != BatchStatus.COMPLETED:
        remaining = body["counts"]["queued"] + body["counts"]["running"]
        response.headers["Retry-After"] = str(pacing.for_batch(intake.settings(), remaining))
    return response


# --- the decorator ----------------------------------------------------------------------


def _release(owner: str, route: str, key: str) -> None:
    try:
        with session_scope(intake.settings().database_url) as session:
            keys.release(session, owner, route, key)
    except Exception:
        # Not fatal: the claim is taken over once abandoned (shared.idempotency).
        log.exception("could not release Idempotency-Key claim (%s, %s)", owner, route)


def idempotent(
    route: str,
    replay: Callable[[str, str], Response],
    prepare: Callable[[], None] | None = None,
) -> Callable[[Callable[P, Any]], Callable[P, Response]]:
    """Make a creating POST honour ``Idempotency-Key``. The view answers 2xx with a JSON
    body whose ``id`` is the created resource. ``prepare`` runs before the body is
    read (a batch raises its own size limits first)."""

    def wrap(view: Callable[P, Any]) -> Callable[P, Response]:
        @functools.wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
            key = request_key()
            if key is None:
                return current_app.make_response(view(*args, **kwargs))
            if prepare is not None:
                prepare()
            owner = current_owner()
            fingerprint = request_fingerprint()
            with session_scope(intake.settings().database_url) as session:
                claim = keys.claim(session, owner, route, key, fingerprint)
            if claim.outcome is keys.Outcome.MISMATCH:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    f"This {HEADER} was already used for a different request; "
                    "send a new key with a new request.",
                )
            if claim.outcome is keys.Outcome.IN_PROGRESS:
                raise ApiError(
                    409,
                    "idempotency_key_in_use",
                    f"A request with this {HEADER} is still being processed; "
                    "retry in a moment to get its result.",
                    {"Retry-After": "1"},
                )
            if claim.outcome is keys.Outcome.REPLAY:
                assert claim.resource_id is not None
                response = replay(owner, claim.resource_id)
                response.headers[REPLAYED_HEADER] = "true"
                return response
            try:
                response = current_app.make_response(view(*args, **kwargs))
            except BaseException:
                _release(owner, route, key)
                raise
            body = response.get_json(silent=True) if response.is_json else None
            resource_id = body.get("id") if isinstance(body, dict) else None
            if not (200 <= response.status_code < 300 and isinstance(resource_id, str)):
                _release(owner, route, key)
                return response
            try:
                with session_scope(intake.settings().database_url) as session:
                    keys.complete(session, owner, route, key, resource_id)
            except Exception:
                # The resource exists and this answer names it: failing the request now
                # would only make the client retry into a second resource.
                log.exception("could not record Idempotency-Key for %s %s", route, resource_id)
            return response

        return wrapper

    return wrap
