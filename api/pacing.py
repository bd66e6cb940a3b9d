"""``Retry-After`` on an unfinished job or batch: when it is worth asking again, from
what the queue holds rather than a constant.

- a queued job: ``(jobs queued before it + 1) / recent completion rate``;
- a running job: 1 s (a recording takes well under a second once it runs);
- a batch: ``items queued or running / recent completion rate``;

each rounded up and bounded to 1 s .. ``TUSSIS_RETRY_AFTER`` (30 s by default). The
completion rate is the jobs finished in the last minute (any owner, both queues), read
at most every few seconds per API process. With nothing finished in the last minute
(an idle service, or no worker), a queued job's value is 1 s per job ahead of it.
A client that long-polls (``Prefer: wait``) needs none of it: it is woken.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import timedelta

from sqlalchemy import func, select

from shared.config import Settings
from shared.db import read_once
from shared.tables import Job, utcnow

RATE_WINDOW_S = 60.0
RATE_REFRESH_S = 5.0
RUNNING_S = 1

_lock = threading.Lock()
_rate: dict[str, tuple[float, float]] = {}  # database url -> (jobs/s, monotonic time read)


def completion_rate(settings: Settings) -> float:
    """Jobs finished per second over the last minute (cached per process)."""
    url = settings.database_url
    now = time.monotonic()
    cached = _rate.get(url)
    if cached is not None and now - cached[1] < RATE_REFRESH_S:
        return cached[0]
    since = utcnow() - timedelta(seconds=RATE_WINDOW_S)
    finished = read_once(
        url,
        lambda conn: conn.execute(
            select(func.count()).select_from(Job).where(Job.finished_at >= since)
        ).scalar_one(),
    )
    rate = int(finished) / RATE_WINDOW_S
    with _lock:
        _rate[url] = (rate, now)
    return rate


def _bounded(seconds: float, settings: Settings) -> int:
    return int(min(max(1, math.ceil(seconds)), max(1, settings.retry_after_s)))


def for_queued(settings: Settings, ahead: int) -> int:
    rate = completion_rate(settings)
    seconds = (ahead + 1) / rate if rate > 0 else 1 + ahead
    return _bounded(seconds, settings)


def for_running(settings: Settings) -> int:
    return _bounded(RUNNING_S, settings)


def for_job(settings: Settings, status: str, ahead: int | None) -> int:
    if status == "queued":
        return for_queued(settings, ahead or 0)
    return for_running(settings)


def for_batch(settings: Settings, remaining: int) -> int:
    if remaining <= 0:
        return for_running(settings)
    rate = completion_rate(settings)
    return _bounded(remaining / rate if rate > 0 else remaining, settings)
