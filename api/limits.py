"""Rate limits per API key (per client address in open mode), with Flask-Limiter and
the ``limits`` library under it.

Two limits on every ``/api/v1`` blueprint: requests (``TUSSIS_RATE_LIMIT``, a moving
window), and uploaded bytes per minute (``TUSSIS_UPLOAD_BYTES_PER_MINUTE``), charged
for the bytes a request body actually carries: its declared ``Content-Length`` before
it is read (a body that cannot fit is refused unread), and whatever a body without
one (``Transfer-Encoding: chunked``) sends, while it is read. The byte budget is a
sliding-window *counter* (two numbers per key), not a moving window: that keeps one
entry per unit, and a unit is a byte (a declared 50 MB cost a worker 400 MB).
Counters live in Redis when the deployment has one, so every API process shares
them; the embedded defaults count in memory.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, g, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import RateLimitItem, parse
from limits.strategies import SlidingWindowCounterRateLimiter

from api import guards
from api.auth import current_caller
from api.errors import ApiError, error_response
from shared.config import Settings

log = logging.getLogger(__name__)

# Requests whose body is an upload.
UPLOAD_METHODS = frozenset({"POST", "PUT", "PATCH"})
# A body without a declared length is charged as it is read, this much at a time (the
# rest when the request ends): one counter update per step, not per read.
CHARGE_STEP = 256 * 1024


def _limit_key() -> str:
    return current_caller().limit_key


@dataclass
class UploadBudget:
    """Uploaded bytes per key per minute. A charge either fits and is taken, or is
    refused and takes nothing. A broken counter store lets uploads through (as the
    request limiter does) rather than take the API down."""

    strategy: SlidingWindowCounterRateLimiter
    item: RateLimitItem
    per_minute: int

    def _key(self, key: str) -> tuple[str, str]:
        return ("tussis-upload-bytes", key)

    def take(self, key: str, cost: int) -> bool:
        try:
            return self.strategy.hit(self.item, *self._key(key), cost=max(1, cost))
        except Exception as exc:
            log.warning("upload byte budget unavailable (%s); not counted", type(exc).__name__)
            return True

    def take_what_is_left(self, key: str, cost: int) -> None:
        """Charge a body already read: as much of ``cost`` as is left (a charge over
        the limit would be refused whole), so the next upload finds the budget spent."""
        try:
            left = self.strategy.get_window_stats(self.item, *self._key(key)).remaining
            if left > 0:
                self.strategy.hit(self.item, *self._key(key), cost=min(cost, left))
        except Exception as exc:
            log.warning("upload byte budget unavailable (%s); not counted", type(exc).__name__)

    def spent(self, key: str) -> bool:
        """Nothing is left: a body of unknown length is refused before it is read."""
        try:
            return not self.strategy.test(self.item, *self._key(key))
        except Exception:
            return False

    def retry_after(self, key: str) -> int:
        try:
            reset = self.strategy.get_window_stats(self.item, *self._key(key)).reset_time
        except Exception:
            return 1
        return max(1, math.ceil(reset - time.time()))

    def refusal(self, key: str) -> ApiError:
        return ApiError(
            429,
            "rate_limited",
            f"This API key has uploaded more than {self.per_minute} bytes in the last minute; "
            "retry after the seconds given in Retry-After.",
            {"Retry-After": str(self.retry_after(key))},
        )


class _BodyMeter:
    """Charges one request's body as it is read, beyond what was charged up front."""

    def __init__(self, budget: UploadBudget, key: str, charged: int) -> None:
        self.budget, self.key = budget, key
        self.charged = charged  # bytes paid for: the declared length, then steps
        self.read = 0

    def __call__(self, size: int) -> None:
        self.read += size
        if self.read - self.charged >= CHARGE_STEP:
            due, self.charged = self.read - self.charged, self.read
            if not self.budget.take(self.key, due):
                raise self.budget.refusal(self.key)

    def finish(self) -> None:
        """The request is answered: count what it read beyond its charges."""
        if self.read > self.charged:
            self.budget.take_what_is_left(self.key, self.read - self.charged)
            self.charged = self.read


def init_app(app: Flask, settings: Settings, blueprints: list[Blueprint]) -> Limiter:
    limiter = Limiter(
        _limit_key,
        app=app,
        storage_uri=settings.rate_limit_storage_url,
        # A counter per window (the current and the previous one, weighted): O(1) per
        # request, where a moving window keeps one entry per request (the byte budget
        # above is such a counter too, for the same reason).
        strategy="sliding-window-counter",
        # Off: its header hook rewrites every Retry-After (the 202's polling hint too).
        headers_enabled=False,
        key_prefix="tussis-rate",
        # A broken counter store must not take the API down: count in memory meanwhile.
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )
    requests_limit = limiter.shared_limit(settings.rate_limit, scope="requests")
    for bp in blueprints:
        requests_limit(bp)
    budget = UploadBudget(
        SlidingWindowCounterRateLimiter(limiter.storage),
        parse(f"{settings.upload_bytes_per_minute}/minute"),
        settings.upload_bytes_per_minute,
    )
    uploads = {bp.name for bp in blueprints}

    @app.before_request
    def _charge_upload() -> None:
        # After authentication (registered later), so the budget is the caller's.
        if request.method not in UPLOAD_METHODS or request.blueprint not in uploads:
            return
        key = current_caller().limit_key
        declared = request.content_length or 0
        if declared and not budget.take(key, declared):
            raise budget.refusal(key)
        if not declared and budget.spent(key):
            raise budget.refusal(key)
        meter = g.tussis_body_meter = _BodyMeter(budget, key, declared)
        guards.on_body_read(meter)

    @app.teardown_request
    def _charge_the_rest(_: BaseException | None) -> None:
        meter = g.pop("tussis_body_meter", None)
        if meter is not None:
            meter.finish()

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded) -> Response:
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
