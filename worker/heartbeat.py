"""Lease renewal: a worker child tells the job store, every few seconds, that it is
still working on the jobs it has claimed.

Leases can then be short (``TUSSIS_JOB_LEASE``, 30 s) whatever the task time
limit: a job whose worker (or host) died stops being renewed and the sweeper
re-publishes it within a lease and a sweep interval, while a long job on a live
worker keeps its lease. The thread starts in the child on first use, never in the
Celery parent, and dies with the child.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy.orm import Session

from shared import jobs

log = logging.getLogger("tussis.worker")


class Heartbeat:
    def __init__(
        self,
        session: Callable[[], AbstractContextManager[Session]],
        worker_id: Callable[[], str],
        lease_s: float,
        interval_s: float,
    ) -> None:
        self._session = session
        self._worker_id = worker_id
        self.lease_s = lease_s
        self.interval_s = interval_s
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid: int | None = None

    def hold(self, job_ids: list[str]) -> None:
        """Renew these jobs' leases until :meth:`release`."""
        with self._lock:
            self._held.update(job_ids)
            self._ensure_thread()

    def release(self, job_ids: list[str]) -> None:
        with self._lock:
            self._held.difference_update(job_ids)

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def _ensure_thread(self) -> None:
        # A forked child inherits the object but not the thread: start one per process.
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        threading.Thread(target=self._run, name="tussis-heartbeat", daemon=True).start()

    def beat(self) -> int:
        """One renewal of every held lease; returns how many this worker still holds."""
        held = self.held()
        if not held:
            return 0
        with self._session() as session:
            return jobs.renew_leases(session, held, self._worker_id(), self.lease_s)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            try:
                self.beat()
            except Exception as exc:
                # The database may be restarting: the next beat tries again. Should the
                # lease run out meanwhile, the job is re-published and the claim lost.
                log.warning("heartbeat: could not renew leases (%s)", type(exc).__name__)
