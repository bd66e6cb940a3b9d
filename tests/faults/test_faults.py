"""Faults injected into a running system; see docs/reliability.md for the guarantees
these tests prove and the recovery times they measured."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shared.config import Settings, normalise_database_url
from tests.conftest import migrate
from tests.faults.conftest import (
    JobTable,
    Receiver,
    fault_settings,
    kill_group,
    record,
    restart_worker,
    submit_batch,
)
from tests.stack import PostgresServer, RedisServer, Stack, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# Every recovery below must finish within this many seconds of the fault's end.
RECOVERY_S = 60.0
BATCH = int(os.environ.get("TUSSIS_FAULTS_BATCH", "200"))


@pytest.fixture
def database_url(fresh_postgres_url: str) -> str:
    """A fresh, migrated database on the machine's PostgreSQL (it is not restarted)."""
    url = normalise_database_url(fresh_postgres_url)
    migrate(url)
    return url


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer(Path("/tmp"))
    server.start()
    migrate(server.url)
    yield server
    server.destroy()


def _stack(settings: Settings, tmp_path: Path, **env: object) -> Stack:
    return Stack(settings, tmp_path, **env)


def _running(table: JobTable, job_id: str) -> bool:
    rows = table.rows(ids=[job_id])
    return bool(rows) and rows[0].status == "running"


# --- 1. the whole worker SIGKILLed ------------------------------------------------------


def test_a_job_whose_whole_worker_was_killed_runs_again_within_a_minute(
    tmp_path: Path, database_url: str, broker: RedisServer, short_recordings: list[Path]
) -> None:
    """Parent, children and beat SIGKILLed mid-job: the lease stops being renewed, the
    sweeper of a new worker re-publishes the job, and it succeeds on attempt 2."""
    settings = fault_settings(tmp_path, database_url, broker.url, drill_task_delay_s=5.0)
    stack = _stack(settings, tmp_path)
    table = JobTable(database_url)
    try:
        stack.start_api()
        stack.start_worker()
        job_id = stack.submit(short_recordings[0].read_bytes()).json()["id"]
        wait_until(lambda: _running(table, job_id), 60, "the job to be claimed", 0.05)
        kill_group(stack.worker)
        killed = time.monotonic()
        restart_worker(stack)
        started = time.monotonic() - killed
        table.wait_all_done(1, RECOVERY_S, "the job to run again", ids=[job_id])
        recovery = time.monotonic() - killed
        attempts = table.check_exactly_once(1, settings.job_max_attempts, ids=[job_id])
        assert attempts == {"2": 1}
        assert table.rows(ids=[job_id])[0].status == "succeeded"
        record(
            "worker_sigkilled",
            recovery_s=round(recovery, 1),
            new_worker_ready_s=round(started, 1),
            lease_s=settings.lease_s,
            sweep_interval_s=settings.sweep_interval_s,
        )
        assert recovery < RECOVERY_S
    finally:
        stack.stop()
        table.dispose()


# --- 2. Redis restarted mid-batch, with a callback retrying -------------------------------


def test_a_broker_restart_mid_batch_loses_nothing_and_the_worker_survives(
    tmp_path: Path,
    database_url: str,
    broker: RedisServer,
    short_recordings: list[Path],
    receiver: Receiver,
) -> None:
    settings = fault_settings(tmp_path, database_url, broker.url)
    stack = _stack(settings, tmp_path, TUSSIS_CALLBACK_ALLOWED_NETWORKS="127.0.0.1/32")
    table = JobTable(database_url)
    try:
        stack.start_api()
        stack.start_worker()
        # A small batch first, whose callback is answered 500 until Redis is back: its
        # retries are ETA messages the worker holds when Redis goes away.
        small = submit_batch(stack, short_recordings[:1], receiver.url)
        wait_until(lambda: receiver.answers(small), 60, "the first callback attempt")
        big = submit_batch(stack, short_recordings[1 : 1 + BATCH], receiver.url)
        wait_until(lambda: table.done(batch_id=big) >= 20, 120, "the batch to be under way")
        broker.stop()  # SIGTERM: what `redis-cli shutdown` does; nothing is persisted
        time.sleep(10)
        done_while_down = table.done(batch_id=big)
        broker.start()  # same port, empty
        back = time.monotonic()
        receiver.failing = False
        table.wait_all_done(BATCH, RECOVERY_S, "the batch to finish", batch_id=big)
        recovery = time.monotonic() - back
        assert stack.worker is not None and stack.worker.poll() is None, "the worker exited"
        log = stack.worker_log.read_text(errors="replace")
        assert "Unrecoverable error" not in log
        attempts = table.check_exactly_once(BATCH, settings.job_max_attempts, batch_id=big)
        # Each callback is delivered exactly once (one 2xx), after its 500s; the small
        # batch's retry was lost with Redis, so the sweeper re-queues it once overdue.
        for batch_id in (small, big):
            wait_until(lambda b=batch_id: 200 in receiver.answers(b), 150, "the callback")
        callbacks_s = time.monotonic() - back
        time.sleep(2)
        assert receiver.answers(small).count(200) == 1
        assert receiver.answers(big).count(200) == 1
        record(
            "redis_restarted_mid_batch",
            batch=BATCH,
            done_before_restart=done_while_down,
            recovery_s=round(recovery, 1),
            attempts=attempts,
            callback_answers_small=receiver.answers(small),
            callbacks_delivered_after_s=round(callbacks_s, 1),
        )
        assert recovery < RECOVERY_S
    finally:
        stack.stop()
        table.dispose()


# --- 3. PostgreSQL restarted mid-batch -------------------------------------------------------


def test_a_database_restart_mid_batch_is_waited_out_and_the_api_answers_503(
    tmp_path: Path, postgres: PostgresServer, broker: RedisServer, short_recordings: list[Path]
) -> None:
    settings = fault_settings(tmp_path, postgres.url, broker.url)
    stack = _stack(settings, tmp_path)
    table = JobTable(postgres.url)
    count = min(BATCH, 120)
    try:
        stack.start_api()
        stack.start_worker()
        batch = submit_batch(stack, short_recordings[:count])
        wait_until(lambda: table.done(batch_id=batch) >= 16, 120, "the batch to be under way")
        postgres.stop()
        down = time.monotonic()
        answers = []
        while time.monotonic() - down < 10:
            post = stack.submit(short_recordings[0].read_bytes())
            get = requests.get(f"{stack.url}/api/v1/batches/{batch}", timeout=30)
            answers += [post.status_code, get.status_code]
            for response in (post, get):
                assert response.status_code == 503, response.text
                assert response.json()["error"]["code"] == "database_unavailable"
                assert int(response.headers["Retry-After"]) > 0
            time.sleep(1)
        postgres.start()
        back = time.monotonic()
        table.wait_all_done(count, RECOVERY_S, "the batch to finish", batch_id=batch)
        recovery = time.monotonic() - back
        attempts = table.check_exactly_once(count, settings.job_max_attempts, batch_id=batch)
        assert requests.get(f"{stack.url}/api/v1/batches/{batch}", timeout=30).ok
        log = stack.worker_log.read_text(errors="replace")
        assert "database unavailable" in log  # the worker retried instead of acking
        assert "MaxRetriesExceededError" not in log  # however long the outage
        record(
            "postgres_restarted_mid_batch",
            batch=count,
            recovery_s=round(recovery, 1),
            attempts=attempts,
            api_answers_while_down=sorted(set(answers)),
        )
        assert recovery < RECOVERY_S
    finally:
        stack.stop()
        table.dispose()


# --- 4. SIGTERM mid-batch ----------------------------------------------------------------------


def test_a_worker_stopped_with_sigterm_mid_batch_loses_nothing(
    tmp_path: Path, database_url: str, broker: RedisServer, short_recordings: list[Path]
) -> None:
    settings = fault_settings(tmp_path, database_url, broker.url)
    stack = _stack(settings, tmp_path)
    table = JobTable(database_url)
    count = min(BATCH, 100)
    try:
        stack.start_api()
        stack.start_worker()
        batch = submit_batch(stack, short_recordings[:count])
        wait_until(lambda: table.done(batch_id=batch) >= 16, 120, "the batch to be under way")
        assert stack.worker is not None
        # To the parent only, as `docker stop` (or systemd's KillMode=mixed) does: a warm
        # shutdown finishes the chunk in progress. (SIGTERM to the whole group also
        # kills the children: their chunks are requeued and count a second attempt.)
        os.kill(stack.worker.pid, signal.SIGTERM)
        stack.worker.wait(timeout=120)
        stopped = time.monotonic()
        done_at_stop = table.done(batch_id=batch)
        restart_worker(stack)
        table.wait_all_done(count, 120, "the batch to finish", batch_id=batch)
        recovery = time.monotonic() - stopped
        attempts = table.check_exactly_once(count, settings.job_max_attempts, batch_id=batch)
        assert set(attempts) == {"1"}, attempts  # in-flight work finished, the rest requeued
        record(
            "worker_sigterm_mid_batch",
            batch=count,
            done_at_stop=done_at_stop,
            finish_after_restart_s=round(recovery, 1),
            attempts=attempts,
        )
    finally:
        stack.stop()
        table.dispose()


# --- 5. the host dies ----------------------------------------------------------------------------


def test_a_host_that_dies_mid_batch_finishes_the_batch_after_the_restart(
    tmp_path: Path, database_url: str, broker: RedisServer, short_recordings: list[Path]
) -> None:
    """API, worker and beat SIGKILLed together (PostgreSQL and Redis live elsewhere)."""
    settings = fault_settings(tmp_path, database_url, broker.url)
    stack = _stack(settings, tmp_path)
    table = JobTable(database_url)
    try:
        stack.start_api()
        stack.start_worker()
        batch = submit_batch(stack, short_recordings[:BATCH])
        wait_until(lambda: table.done(batch_id=batch) >= 20, 120, "the batch to be under way")
        kill_group(stack.api)
        kill_group(stack.worker)
        done_at_death = table.done(batch_id=batch)
        restarted = time.monotonic()
        stack.start_api()
        restart_worker(stack)
        table.wait_all_done(BATCH, 300, "the batch to finish", batch_id=batch)
        recovery = time.monotonic() - restarted
        attempts = table.check_exactly_once(BATCH, settings.job_max_attempts, batch_id=batch)
        body = requests.get(f"{stack.url}/api/v1/batches/{batch}", timeout=30).json()
        wait_until(
            lambda: (
                requests.get(f"{stack.url}/api/v1/batches/{batch}", timeout=30).json()["status"]
                == "completed"
            ),
            30,
            "the batch to be completed",
        )
        left = BATCH - done_at_death
        record(
            "host_died_mid_batch",
            batch=BATCH,
            left_at_death=left,
            finish_after_restart_s=round(recovery, 1),
            attempts=attempts,
            status_after=body["status"],
        )
        # Only the chunk in flight at the death is analysed twice.
        assert attempts.get("2", 0) <= settings.batch_chunk_size
        assert recovery < RECOVERY_S
    finally:
        stack.stop()
        table.dispose()


# --- 6. a job over the time limit --------------------------------------------------------------


def test_a_job_over_the_time_limit_fails_once_without_redelivery(
    tmp_path: Path, database_url: str, broker: RedisServer, short_recordings: list[Path]
) -> None:
    settings = fault_settings(
        tmp_path,
        database_url,
        broker.url,
        task_time_limit_s=12,  # soft limit at 7 s
        drill_task_delay_s=10.0,
        job_lease_s=6.0,
        sweep_interval_s=2.0,
    )
    stack = _stack(settings, tmp_path)
    table = JobTable(database_url)
    try:
        stack.start_api()
        stack.start_worker()
        job_id = stack.submit(short_recordings[0].read_bytes()).json()["id"]
        table.wait_all_done(1, 60, "the job to time out", ids=[job_id])
        job = stack.job(job_id)
        assert job["status"] == "failed" and job["error"]["code"] == "timeout", job
        time.sleep(settings.lease_s + 3 * settings.sweep_interval_s)  # no storm afterwards
        assert table.check_exactly_once(1, 1, ids=[job_id]) == {"1": 1}
        assert stack.worker is not None and stack.worker.poll() is None
        record("time_limit", attempts=1, soft_limit_s=settings.task_soft_time_limit_s)
    finally:
        stack.stop()
        table.dispose()


# --- 7. replacement children after max_tasks_per_child -------------------------------------------


def test_replacement_children_load_the_model_and_work(
    tmp_path: Path, database_url: str, broker: RedisServer, short_recordings: list[Path]
) -> None:
    # Each job its own task (no coalescing), so that replacement children get jobs to do.
    settings = fault_settings(
        tmp_path, database_url, broker.url, worker_max_tasks_per_child=2, coalesce_jobs=0
    )
    stack = _stack(settings, tmp_path)
    table = JobTable(database_url)
    try:
        stack.start_api()
        stack.start_worker()
        ids = [stack.submit(f.read_bytes()).json()["id"] for f in short_recordings[:6]]
        table.wait_all_done(6, 180, "six jobs", ids=ids)
        assert table.check_exactly_once(6, 1, ids=ids) == {"1": 6}
        assert {r.status for r in table.rows(ids=ids)} == {"succeeded"}
        # One child per two tasks: at least three children loaded the model.
        assert stack.children_ready() >= 3
        record("max_tasks_per_child", children_ready=stack.children_ready(), jobs=6)
    finally:
        stack.stop()
        table.dispose()


# --- 8. load ---------------------------------------------------------------------------------


LOAD_JOBS = int(os.environ.get("TUSSIS_FAULTS_LOAD_JOBS", "400"))
CLIENTS = 4


def _client(url: str, files: list[str], out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    session = requests.Session()
    ids = []
    for path in files:
        response = session.post(
            f"{url}/api/v1/jobs", files={"audio": (Path(path).name, Path(path).read_bytes())}
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    out.put(ids)


def test_load_every_job_has_exactly_one_result(
    tmp_path: Path, database_url: str, broker: RedisServer, short_recordings: list[Path]
) -> None:
    settings = fault_settings(tmp_path, database_url, broker.url, worker_concurrency=2)
    stack = _stack(settings, tmp_path)
    table = JobTable(database_url)
    shortest = [str(f) for f in short_recordings[:50]]
    try:
        stack.start_api()
        stack.start_worker(concurrency=2)
        per_client = [
            [shortest[(c * 7 + i) % len(shortest)] for i in range(LOAD_JOBS // CLIENTS)]
            for c in range(CLIENTS)
        ]
        out: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()  # type: ignore[type-arg]
        ctx = multiprocessing.get_context("spawn")
        started = time.monotonic()
        procs = [ctx.Process(target=_client, args=(stack.url, f, out)) for f in per_client]
        for p in procs:
            p.start()
        ids = [i for _ in procs for i in out.get(timeout=1800)]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        submitted = time.monotonic() - started
        total = len(ids)
        assert total == CLIENTS * (LOAD_JOBS // CLIENTS) == len(set(ids))
        table.wait_all_done(total, 3600, "every job", ids=ids)
        drained = time.monotonic() - started
        attempts = table.check_exactly_once(total, 1, ids=ids)
        record(
            "load",
            jobs=total,
            clients=CLIENTS,
            submit_s=round(submitted, 1),
            submit_per_s=round(total / submitted, 1),
            drain_s=round(drained, 1),
            drain_per_s=round(total / drained, 1),
            attempts=attempts,
        )
    finally:
        stack.stop()
        table.dispose()
