"""Single jobs coalesced into one chunk by a worker child (TUSSIS_COALESCE_JOBS), and
that child SIGKILLed mid-chunk: every job still ends exactly once. The killed child's
delivery comes back (late ack) and each other job's own message finds its job held by a
dead worker; each job is claimed again, alone (a retry never coalesces), and finishes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import requests

from shared.config import normalise_database_url
from tests.conftest import migrate
from tests.faults.conftest import JobTable, fault_settings, record
from tests.faults.test_faults import RECOVERY_S
from tests.stack import Stack, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

JOBS = 6


def test_coalesced_single_jobs_each_end_exactly_once_when_their_child_is_killed(
    tmp_path: Path, fresh_postgres_url: str, redis_url: str, short_recordings: list[Path]
) -> None:
    database_url = normalise_database_url(fresh_postgres_url)
    migrate(database_url)
    # The drill delay holds the chunk after its claim, so that it can be killed mid-way.
    settings = fault_settings(tmp_path, database_url, redis_url, drill_task_delay_s=3.0)
    stack = Stack(settings, tmp_path)
    table = JobTable(database_url)
    try:
        stack.start_api()
        # Queued before any worker runs: the first child's first message finds the rest.
        ids = [stack.submit(f.read_bytes(), f.name).json()["id"] for f in short_recordings[:JOBS]]
        stack.start_worker()

        def one_chunk() -> set[str]:
            rows = table.rows(ids=ids)
            return {r.id for r in rows if r.status == "running"}

        wait_until(lambda: len(one_chunk()) == JOBS, 60, "the child to claim them all", 0.05)
        with table.engine.connect() as conn:
            workers = {
                w for (w,) in conn.exec_driver_sql(
                    "SELECT worker FROM jobs WHERE id = ANY(%(ids)s)", {"ids": ids}
                )
            }  # fmt: skip
        assert len(workers) == 1, workers  # one child holds them all: one chunk
        pid = int(next(iter(workers)).rsplit(":", 2)[1])
        log = stack.worker_log.read_text(errors="replace")
        assert f"{JOBS - 1} more queued job(s) claimed" in log
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        table.wait_all_done(JOBS, RECOVERY_S, "the coalesced jobs to finish", ids=ids)
        recovery = time.monotonic() - killed
        attempts = table.check_exactly_once(JOBS, settings.job_max_attempts, ids=ids)
        # Each was in the killed chunk once, then ran alone once.
        assert attempts == {"2": JOBS}, attempts
        assert all(
            requests.get(f"{stack.url}/api/v1/jobs/{i}", timeout=10).json()["status"] == "succeeded"
            for i in ids
        )
        record("coalesced_child_killed", jobs=JOBS, recovery_s=round(recovery, 1))
        assert recovery < RECOVERY_S
    finally:
        stack.stop()
        table.dispose()
