"""Change notifications: the worker says "job X (or batch Y) has reached its end" once
it has committed it, and each API process wakes the long polls waiting for it
(api/waiting.py). They only wake; the waiter reads the row, which stays the truth.

Which channel, by what the deployment runs (the same choice on both sides):

- ``redis``: a Redis broker is configured: ``PUBLISH`` on a channel per queue name;
- ``postgres``: no Redis, PostgreSQL: ``NOTIFY`` (``pg_notify``), heard by ``LISTEN``;
- ``poll``: the embedded default (SQLite, SQLite broker): nothing is sent; each API
  process asks the database about the rows its waiters wait for, a few times a second,
  in one query for all of them.

A lost notification costs a waiter only its wait: it answers the current state at the
end of ``Prefer: wait`` as any poll would.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from sqlalchemy import make_url, select

from shared.config import Settings
from shared.tables import TERMINAL_STATUSES, Batch, BatchStatus, Job

log = logging.getLogger(__name__)

Backend = Literal["redis", "postgres", "poll"]
# A listener that lost its connection tries again after this long, doubling to the max.
RECONNECT_S = 1.0
RECONNECT_MAX_S = 30.0
# How often a listener looks up from its connection (to notice it should stop).
LISTEN_SLICE_S = 1.0


def backend(settings: Settings) -> Backend:
    if settings.broker_url.startswith(("redis://", "rediss://")):
        return "redis"
    if settings.database_url.startswith("postgresql"):
        return "postgres"
    return "poll"


def channel(settings: Settings) -> str:
    """One channel per queue name (so stacks that share Redis or a database do not wake
    each other's waiters), a valid PostgreSQL identifier."""
    return "tussis_changes_" + hashlib.sha1(settings.queue_name.encode()).hexdigest()[:16]


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


def batch_key(batch_id: str) -> str:
    return f"batch:{batch_id}"


def _psycopg_url(database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class Publisher:
    """Sends notifications after the caller's commit; one per process. Never raises: a
    notification that cannot be sent costs a waiter only its wait."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backend = backend(settings)
        self.channel = channel(settings)
        self._redis: Any = None
        self._lock = threading.Lock()

    def jobs(self, job_ids: Iterable[str]) -> None:
        self._send([job_key(j) for j in job_ids])

    def batch(self, batch_id: str) -> None:
        self._send([batch_key(batch_id)])

    def _send(self, keys: list[str]) -> None:
        if not keys or self.backend == "poll":
            return
        try:
            if self.backend == "redis":
                self._send_redis(keys)
            else:
                self._send_postgres(keys)
        except Exception as exc:
            log.warning("could not send a change notification (%s)", type(exc).__name__)

    def _send_redis(self, keys: list[str]) -> None:
        import redis

        with self._lock:
            if self._redis is None:
                timeout = self.settings.publish_timeout_s
                self._redis = redis.Redis.from_url(
                    self.settings.broker_url, socket_connect_timeout=timeout, socket_timeout=timeout
                )
        # One message (ids joined) for a chunk's worth: one round trip.
        self._redis.publish(self.channel, " ".join(keys))

    def _send_postgres(self, keys: list[str]) -> None:
        from sqlalchemy import func

        from shared.db import read_once

        def send(conn: Any) -> None:
            for payload in _payloads(keys):
                conn.execute(select(func.pg_notify(self.channel, payload)))

        read_once(self.settings.database_url, send)


# A NOTIFY payload must stay under 8000 bytes: a long list of keys goes in several.
PAYLOAD_MAX = 7000


def _payloads(keys: list[str]) -> list[str]:
    out, current = [], ""
    for key in keys:
        if current and len(current) + len(key) + 1 > PAYLOAD_MAX:
            out.append(current)
            current = ""
        current = f"{current} {key}" if current else key
    if current:
        out.append(current)
    return out


def listen(settings: Settings, on_keys: Callable[[list[str]], None], stop: threading.Event) -> None:
    """Call ``on_keys`` with the keys of every notification until ``stop`` is set,
    reconnecting after errors (redis and postgres backends; blocking: run it in a thread)."""
    kind = backend(settings)
    if kind == "poll":
        raise ValueError("the poll backend has nothing to listen to")
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            if kind == "redis":
                _listen_redis(settings, on_keys, stop)
            else:
                _listen_postgres(settings, on_keys, stop)
        except Exception as exc:
            # Long polls still end at their wait's end meanwhile; back off so that an
            # outage is a few log lines, not one a second.
            failures = 1 if time.monotonic() - started > RECONNECT_MAX_S else failures + 1
            delay = min(RECONNECT_MAX_S, RECONNECT_S * 2 ** (failures - 1))
            log.warning(
                "change notifications: listener lost its connection (%s); again in %.0f s",
                type(exc).__name__,
                delay,
            )
            stop.wait(delay)


def _listen_redis(
    settings: Settings, on_keys: Callable[[list[str]], None], stop: threading.Event
) -> None:
    import redis

    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    try:
        pubsub.subscribe(channel(settings))
        while not stop.is_set():
            message = pubsub.get_message(timeout=LISTEN_SLICE_S)
            if message and message.get("type") == "message":
                data = message["data"]
                on_keys((data.decode() if isinstance(data, bytes) else str(data)).split())
    finally:
        pubsub.close()
        client.close()


def _listen_postgres(
    settings: Settings, on_keys: Callable[[list[str]], None], stop: threading.Event
) -> None:
    import psycopg

    with psycopg.connect(_psycopg_url(settings.database_url), autocommit=True) as conn:
        conn.execute(f'LISTEN "{channel(settings)}"')
        while not stop.is_set():
            for note in conn.notifies(timeout=LISTEN_SLICE_S):
                on_keys(note.payload.split())


def finished_among(conn: Any, keys: Iterable[str]) -> set[str]:
    """For the ``poll`` backend: which of ``keys`` have reached their end (a job
    terminal, a batch completed) or are gone, in one query per kind."""
    job_ids = {k.split(":", 1)[1] for k in keys if k.startswith("job:")}
    batch_ids = {k.split(":", 1)[1] for k in keys if k.startswith("batch:")}
    done: set[str] = set()
    if job_ids:
        rows = conn.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids))).all()
        present = {r.id for r in rows}
        done |= {job_key(r.id) for r in rows if r.status in TERMINAL_STATUSES}
        done |= {job_key(j) for j in job_ids - present}
    if batch_ids:
        rows = conn.execute(select(Batch.id, Batch.status).where(Batch.id.in_(batch_ids))).all()
        present = {r.id for r in rows}
        done |= {batch_key(r.id) for r in rows if r.status == BatchStatus.COMPLETED}
        done |= {batch_key(b) for b in batch_ids - present}
    return done
