"""Rate limits per API key (per client address in open mode), with Flask-Limiter.

Two limits on every ``/api/v1`` blueprint: requests (``TUSSIS_RATE_LIMIT``),
and uploaded bytes per minute on POSTs, where each request costs its size.
Counters live in Redis when the deployment has one, so every API process
shares them; the embedded defaults count in memory.
"""

from __future__ import annotations

import math
import time

from flask import Blueprint, Flask, Response, request
from flask_limiter import Limiter, RateLimitExceeded

from api.auth import current_caller
from api.errors import error_response
from shared.config import Settings


def _limit_key() -> str:
    return current_caller().limit_key


def _upload_cost() -> int:
    # Counted before the body is read, from the declared size; a chunked upload
    # without Content-Length still counts as one byte and meets the size limits.
    return max(1, request.content_length or 0)


def init_app(app: Flask, settings: Settings, blueprints: list[Blueprint]) -> Limiter:
    limiter = Limiter(
        _limit_key,
        app=app,
        storage_uri=settings.rate_limit_storage_url,
        # A counter per window (the current and the previous one, weighted): O(1) per
        # request. The moving window kept one entry per unit of cost, so the upload-bytes
        # limit pushed one list element per uploaded byte (a 100 KB recording: 100,000
        # elements into Redis, or into a Python list, on every upload).
        strategy="sliding-window-counter",
        # Off: its header hook rewrites every Retry-After (the 202's polling hint too).
        headers_enabled=False,
        key_prefix="tussis-rate",
        # A broken counter store must not take the API down: count in memory meanwhile.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )
    requests_limit = limiter.shared_limit(settings.rate_limit, scope="requests")
    bytes_limit = limiter.shared_limit(
        f"{settings.upload_bytes_per_minute}/minute",
        scope="upload-bytes",
        methods=["POST"],
        cost=_upload_cost,
        error_message="upload-bytes",
    )
    for bp in blueprints:
        requests_limit(bp)
        bytes_limit(bp)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded) -> Response:
        if exc.description == "upload-bytes":
            message = (
                f"This API key has uploaded more than {settings.upload_bytes_per_minute} bytes in "
                "the last minute; retry after the seconds given in Retry-After."
            )
        else:
            limit = exc.limit.limit if exc.limit else settings.rate_limit
            message = (
                f"Too many requests for this API key (at most {limit}); retry after the seconds "
                "given in Retry-After."
            )
        return error_response(429, "rate_limited", message, {"Retry-After": str(_retry_after())})

    def _retry_after() -> int:
        """Whole seconds until the breached window lets a request through again."""
        breached = limiter.current_limit
        if breached is None:
            return 1
        return max(1, math.ceil(breached.reset_at - time.time()))

    return limiter
