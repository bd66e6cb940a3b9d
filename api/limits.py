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


# Uploaded bytes are counted in KiB: a moving window keeps one entry per unit of cost
# (a list in memory, a Redis list), so counting single bytes made an upload allocate
# one timestamp per byte before the request was read (measured: an API worker went from
# 90 MiB to 270 MiB on an 11.5 MB upload; an 8-hour WAV of 920 MB would have needed
# gigabytes). In KiB the 920 MB recording costs 900,000 entries (about 30 MiB in a
# worker's memory store, while the minute lasts).
COST_UNIT = 1024


def _upload_cost() -> int:
    # Counted before the body is read, from the declared size; a chunked upload
    # without Content-Length still counts as one unit and meets the size limits.
    return max(1, -(-(request.content_length or 0) // COST_UNIT))


def init_app(app: Flask, settings: Settings, blueprints: list[Blueprint]) -> Limiter:
    limiter = Limiter(
        _limit_key,
        app=app,
        storage_uri=settings.rate_limit_storage_url,
        strategy="moving-window",
        # Off: its header hook rewrites every Retry-After (the 202's polling hint too).
        headers_enabled=False,
        key_prefix="tussis-rate",
        # A broken counter store must not take the API down: count in memory meanwhile.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )
    requests_limit = limiter.shared_limit(settings.rate_limit, scope="requests")
    bytes_limit = limiter.shared_limit(
        f"{max(1, settings.upload_bytes_per_minute // COST_UNIT)}/minute",  # in KiB
        scope="upload-bytes",
        # PATCH: a resumable upload's bytes (api/uploads.py).
        methods=["POST", "PATCH"],
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
