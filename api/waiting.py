"""Long polls: ``Prefer: wait=N`` (RFC 7240) on ``GET`` of a job or a batch.

The request's thread waits on an event, never on the database: one thread per API
process hears the worker's notifications (shared/notify.py) and wakes the waiters of
that job or batch, which then read the row again (one round trip) and answer. On the
embedded default that thread instead asks the database a few times a second about
every row its waiters wait for, in one query. While a request waits it holds one of
gunicorn's threads (``TUSSIS_API_THREADS``, gthread workers) and no database
connection.

A waiter whose client hangs up is woken too: one more thread watches the waiters'
sockets and frees the slot as soon as the peer closes, instead of at the end of the
wait. Each process holds at most :func:`capacity` waiters; past that, a request is
answered at once without ``Preference-Applied``, and the client polls after
``Retry-After`` as it would without the preference.
"""

from __future__ import annotations

import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from flask import current_app, request

from shared import notify
from shared.config import Settings
from shared.db import read_once

log = logging.getLogger(__name__)

# RFC 7240's wait preference, capped: a client may ask for up to a minute.
MAX_WAIT_S = 60
# Threads of each process kept for ordinary requests, however many wait.
RESERVED_THREADS = 8
# The embedded backend's look at the waited-for rows (one query for all of them).
POLL_INTERVAL_S = 0.1
_WAIT = re.compile(r"^\s*wait\s*=\s*\"?(\d{1,6})\"?\s*$", re.IGNORECASE)


def requested_wait(header: str | None) -> int | None:
    """The seconds a ``Prefer`` header asks to wait (at most ``MAX_WAIT_S``), or None.
    Preferences are comma-separated, each may carry ``;`` parameters; the ones not
    understood, and a malformed ``wait``, are ignored as RFC 7240 says."""
    if not header:
        return None
    for preference in header.split(","):
        match = _WAIT.match(preference.split(";", 1)[0])
        if match:
            seconds = int(match.group(1))
            return min(seconds, MAX_WAIT_S) if seconds > 0 else None
    return None


def capacity(threads: int) -> int:
    """Waiters one process may hold: its threads less those kept for other requests."""
    return max(1, threads - min(RESERVED_THREADS, threads // 2))


class Waiter:
    __slots__ = ("event", "gone", "key", "sock")

    def __init__(self, key: str, sock: socket.socket | None) -> None:
        self.key = key
        self.sock = sock
        self.event = threading.Event()
        self.gone = False  # the client hung up

    def wait(self, seconds: float) -> bool:
        """True when woken (a notification, or the client gone) before ``seconds``."""
        return self.event.wait(max(0.0, seconds))


class Hub:
    """The waiters of one API process, and the threads that wake them."""

    def __init__(self, settings: Settings, threads: int) -> None:
        self.settings = settings
        self.capacity = capacity(threads)
        self.backend = notify.backend(settings)
        self._lock = threading.Lock()
        self._by_key: dict[str, set[Waiter]] = {}
        self._count = 0
        self._started = False
        self._stop = threading.Event()
        self._selector: selectors.BaseSelector | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self.on_count: Callable[[int], None] = lambda _n: None

    @property
    def waiting(self) -> int:
        return self._count

    def register(self, key: str, sock: socket.socket | None) -> Waiter | None:
        """A new waiter for ``key``; None when this process holds as many as it may."""
        self._ensure_started()
        with self._lock:
            if self._count >= self.capacity:
                return None
            waiter = Waiter(key, sock)
            self._by_key.setdefault(key, set()).add(waiter)
            self._count += 1
            count = self._count
        self.on_count(count)
        if sock is not None:
            self._watch(waiter)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        if waiter.sock is not None:
            self._unwatch(waiter)
        with self._lock:
            group = self._by_key.get(waiter.key)
            if group is None or waiter not in group:
                return
            group.discard(waiter)
            if not group:
                del self._by_key[waiter.key]
            self._count -= 1
            count = self._count
        self.on_count(count)

    def wake(self, keys: list[str]) -> None:
        with self._lock:
            woken = [w for k in keys for w in self._by_key.get(k, ())]
        for waiter in woken:
            waiter.event.set()

    def close(self) -> None:
        self._stop.set()
        if self._wake_w is not None:
            self._wake_w.send(b"x")

    # --- the threads ----------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._started:
            return
        with self._lock:
            if self._started:
                return
            self._started = True
            self._selector = selectors.DefaultSelector()
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        source = self._poll if self.backend == "poll" else self._listen
        for target, name in ((source, "changes"), (self._watch_sockets, "hangups")):
            threading.Thread(target=target, name=f"tussis-waiters-{name}", daemon=True).start()

    def _listen(self) -> None:
        notify.listen(self.settings, self.wake, self._stop)

    def _poll(self) -> None:
        url = self.settings.database_url
        while not self._stop.wait(POLL_INTERVAL_S):
            with self._lock:
                keys = list(self._by_key)
            if not keys:
                continue
            try:
                done = read_once(url, partial(notify.finished_among, keys=keys))
            except Exception as exc:
                log.warning("long polls: could not look at the database (%s)", type(exc).__name__)
                continue
            if done:
                self.wake(sorted(done))

    def _watch(self, waiter: Waiter) -> None:
        assert self._selector is not None and waiter.sock is not None
        try:
            with self._lock:
                self._selector.register(waiter.sock, selectors.EVENT_READ, waiter)
        except (KeyError, ValueError, OSError):
            waiter.sock = None  # already watched, or closed: nothing to watch

    def _unwatch(self, waiter: Waiter) -> None:
        assert self._selector is not None and waiter.sock is not None
        try:
            with self._lock:
                self._selector.unregister(waiter.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _watch_sockets(self) -> None:
        """Wake a waiter whose client closed its connection (a read that finds the end)."""
        assert self._selector is not None
        while not self._stop.is_set():
            try:
                events = self._selector.select(timeout=5.0)
            except OSError:
                time.sleep(0.05)
                continue
            for key, _mask in events:
                waiter = key.data
                if waiter is None:
                    continue  # the wake-up socket (close())
                self._check_hangup(waiter)

    def _check_hangup(self, waiter: Waiter) -> None:
        sock = waiter.sock
        if sock is None:
            return
        try:
            data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except ValueError:
            # A TLS socket (gunicorn serving HTTPS itself) cannot be peeked at: leave it
            # to its wait's end.
            self._unwatch(waiter)
            return
        except OSError:
            data = b""
        if data:
            # The client sent more (a pipelined request): it is there; stop watching.
            self._unwatch(waiter)
            return
        self._unwatch(waiter)
        waiter.gone = True
        waiter.event.set()


def hub() -> Hub:
    found: Hub = current_app.extensions["tussis.waiters"]
    return found


def client_socket() -> socket.socket | None:
    """The request's connection under gunicorn (None in a test client)."""
    sock: Any = request.environ.get("gunicorn.socket")
    return sock if isinstance(sock, socket.socket) else None


def preference_applied(seconds: int) -> dict[str, str]:
    return {"Preference-Applied": f"wait={seconds}"}
