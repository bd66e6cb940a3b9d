"""One error shape for every rejection:

{"error": {"code": "audio_too_short", "message": "...", "status": 422}}
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared.db import is_unavailable

log = logging.getLogger(__name__)

# Codes for errors Werkzeug raises itself.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
    415: "unsupported_media_type",
    500: "internal_error",
}


# Seconds a client is asked to wait while the database is unreachable (a restart or a
# fail-over usually takes a few).
DATABASE_RETRY_AFTER_S = 5


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        # More fields of the error object (``served`` for model_not_served).
        self.extra = extra


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: object
) -> Response:
    response = jsonify({"error": {"code": code, "message": message, "status": status}, **extra})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def upload_too_large(limit_bytes: int) -> ApiError:
    return ApiError(
        413,
        "upload_too_large",
        f"The upload is larger than the {limit_bytes // (1024 * 1024)} MiB limit; "
        "send a shorter recording.",
    )


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        if exc.extra:
            body = {"code": exc.code, "message": exc.message, "status": exc.status, **exc.extra}
            response = jsonify({"error": body})
            response.status_code = exc.status
            response.headers.update(exc.headers)
            return response
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc: RequestEntityTooLarge) -> Response:
        settings = app.extensions["tussis.settings"]
        if request.path.startswith("/api/v1/batches"):
            err = ApiError(
                413,
                "upload_too_large",
                f"The request is larger than the {settings.max_batch_upload_bytes // 1024**2} MiB "
                "batch limit (or has more parts than allowed); send it in several parts.",
            )
        else:
            err = upload_too_large(settings.max_upload_bytes)
        return error_response(err.status, err.code, err.message, {"Connection": "close"})

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        return error_response(status, _HTTP_CODES.get(status, "http_error"), exc.description or "")

    @app.errorhandler(DBAPIError)
    def _database(exc: DBAPIError) -> Response:
        # Flask picks this handler over the catch-all below for every database error.
        if not is_unavailable(exc):
            log.exception("unhandled database error")
            return error_response(
                500, "internal_error", "An unexpected error occurred on the server."
            )
        log.warning("database unavailable: %s", type(exc).__name__)
        return error_response(
            503,
            "database_unavailable",
            "The job database cannot be reached right now. Try again shortly.",
            {"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "An unexpected error occurred on the server.")
