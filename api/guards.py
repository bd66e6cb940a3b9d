"""Request guards: hostile input stopped at one choke point, before any view runs.

Everything here is cheap and never reads the body (a batch sets its own body
limits before the form is parsed). It answers, in the one error shape:

- ``414 uri_too_long`` for a request target longer than :data:`MAX_TARGET_BYTES`,
  and ``431 headers_too_large`` for too many or too large headers. gunicorn
  refuses longer ones itself (``gunicorn.conf.py``), also in this shape.
- ``404 job_not_found`` / ``batch_not_found`` for an id in the path with a
  control character (a NUL byte reached PostgreSQL, which refuses it with an
  error): such an id cannot exist.
- ``400`` for a control character in a query parameter, and ``400 bad_request``
  for a body that breaks while it is read (gunicorn raises its own parse errors,
  such as a bad chunk size, from inside the app's read).
- ``400 host_not_allowed`` for a Host outside ``TUSSIS_ALLOWED_HOSTS``, when it is
  set (api/hosts.py; open mode checks its Host in api/auth.py).

The request body is wrapped once, here: it counts the bytes actually read, which
the upload byte budget (api/limits.py) and the upload metrics charge, since a
chunked body declares no length.

Form fields (file names, labels) are checked where they are read, with
:func:`has_control`, because only the views know their meaning.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import BadRequest, HTTPException

from api import hosts
from api.errors import ApiError

# Below gunicorn's largest request line (8190 bytes with the method and version), so
# that the app, not gunicorn, answers most long URLs, and any server gets the same.
MAX_TARGET_BYTES = 8000
# gunicorn's defaults, as set in gunicorn.conf.py: per header line, and how many.
MAX_HEADER_BYTES = 8190
MAX_HEADERS = 100

# Path parameters that name a stored row, and the 404 an impossible value gets.
_ID_ERRORS = {
    "job_id": ("job_not_found", "There is no such job."),
    "batch_id": ("batch_not_found", "There is no such batch."),
    "recording_id": ("recording_not_found", "There is no such recording."),
    "upload_id": ("upload_not_found", "There is no such upload."),
}
_PARAM_CODES = {"limit": "invalid_limit", "cursor": "invalid_cursor"}


def has_control(text: str) -> bool:
    """Control characters (NUL, C0, DEL, C1) or lone surrogates: never part of a
    name, label or id, and NUL is refused by PostgreSQL's text columns."""
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def finite(value: Any) -> Any:
    """``value`` with every NaN and infinity replaced by ``None``: JSON has neither,
    and one ``NaN`` in a listing makes the whole answer unreadable to strict parsers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _target_bytes() -> int:
    environ = request.environ
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw is not None:
        return len(raw.encode("latin-1", "replace"))
    query = environ.get("QUERY_STRING", "")
    return len(environ.get("PATH_INFO", "").encode("latin-1", "replace")) + len(query) + 1


def _check_size() -> None:
    if _target_bytes() > MAX_TARGET_BYTES:
        raise ApiError(
            414,
            "uri_too_long",
            f"The URL is longer than {MAX_TARGET_BYTES} bytes; send long values in the body.",
            {"Connection": "close"},
        )
    headers = list(request.headers.items())
    if len(headers) > MAX_HEADERS or any(
        len(name) + len(value) + 2 > MAX_HEADER_BYTES for name, value in headers
    ):
        raise ApiError(
            431,
            "headers_too_large",
            f"The request has more than {MAX_HEADERS} headers, or one longer than "
            f"{MAX_HEADER_BYTES} bytes.",
            {"Connection": "close"},
        )


def _check_text() -> None:
    for name, value in (request.view_args or {}).items():
        if isinstance(value, str) and has_control(value):
            code, message = _ID_ERRORS.get(name, ("not_found", "There is no such resource."))
            raise ApiError(404, code, message)
    for name, value in request.args.items(multi=True):
        if has_control(name) or has_control(value):
            raise ApiError(
                400,
                _PARAM_CODES.get(name, "invalid_parameter"),
                "A query parameter contains a control character (such as a NUL byte).",
            )


class _ClientBody:
    """``wsgi.input`` whose read errors are the client's, and which counts what is read.

    Werkzeug already answers an OSError or ValueError as a disconnected client (400);
    gunicorn's parse errors for a broken chunked body are neither, and were answered
    500. ``listeners`` hear the size of every read; what they raise (a 429 for a body
    over the byte budget) ends the request."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.bytes_read = 0
        self.listeners: list[Callable[[int], None]] = []

    def read(self, *args: Any) -> bytes:
        return self._guarded("read", *args)

    def readline(self, *args: Any) -> bytes:
        return self._guarded("readline", *args)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def _guarded(self, name: str, *args: Any) -> bytes:
        try:
            data: bytes = getattr(self._stream, name)(*args)
        except (HTTPException, OSError, ValueError):
            raise
        except Exception as exc:
            raise BadRequest(
                "The request body is malformed (for example, a broken chunked encoding)."
            ) from exc
        self.bytes_read += len(data)
        for listener in self.listeners:
            listener(len(data))
        return data


def _body() -> _ClientBody | None:
    body = request.environ.get("wsgi.input")
    return body if isinstance(body, _ClientBody) else None


def on_body_read(listener: Callable[[int], None]) -> None:
    """Call ``listener`` with the size of each read of this request's body."""
    body = _body()
    if body is not None:
        body.listeners.append(listener)


def body_bytes_read() -> int:
    """Bytes of this request's body read so far (its declared length if unwrapped)."""
    body = _body()
    return body.bytes_read if body is not None else request.content_length or 0


def init_app(app: Flask) -> None:
    """Register the guard first, so it runs before authentication and rate limits."""
    # Werkzeug answers a path with "//" by a redirect with an HTML page, before any
    # handler could give it the error shape; no API path has one, so it is a plain 404.
    app.url_map.merge_slashes = False

    allowed_hosts = app.extensions["tussis.settings"].allowed_hosts

    @app.before_request
    def _guard_request() -> None:
        _check_size()
        if allowed_hosts:
            hosts.check_host(allowed_hosts)
        _check_text()
        if "wsgi.input" in request.environ:
            request.environ["wsgi.input"] = _ClientBody(request.environ["wsgi.input"])
