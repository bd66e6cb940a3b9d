"""The failure suite: real gunicorn, celery worker, Redis and PostgreSQL processes,
real recordings, one fault injected per test. Each test checks that every accepted
job ends in exactly one terminal state with one result, and records how long the
recovery took (printed, and kept in ``var/faults-report.json``)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from shared.config import PROJECT_ROOT, Settings
from tests.conftest import YAMNET_MODEL, base_settings, require
from tests.stack import Stack, wait_until

# The shipped YAMNet bundle: about 0.1 s per clip, no training needed.
MODEL = PROJECT_ROOT / "models" / "default"
REPORT = PROJECT_ROOT / "var" / "faults-report.json"
TERMINAL = ("succeeded", "failed")


def record(name: str, **figures: Any) -> None:
    """Print the measured figures and keep them for the docs and the lead."""
    print(f"\n[faults] {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    try:
        report = json.loads(REPORT.read_text())
    except (OSError, ValueError):
        report = {}
    report[name] = {**figures, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    REPORT.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def short_recordings(cough_files: list[Path]) -> list[Path]:
    """Real recordings, shortest files first (past the tiniest, which are too short)."""
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    by_size = sorted(cough_files, key=lambda f: f.stat().st_size)
    return by_size[len(by_size) // 10 :]


def fault_settings(tmp_path: Path, database_url: str, broker_url: str, **extra: Any) -> Settings:
    return base_settings(
        tmp_path,
        database_url=database_url,
        broker_url=broker_url,
        model_bundle=MODEL,
        cough_gate_bundle=None,  # the gate is not the point here
        rate_limit="100000/second",
        **extra,
    )


def restart_worker(stack: Stack, concurrency: int = 1) -> None:
    """A new ``celery worker`` (with its beat) in a new log, as a supervisor would start."""
    stack.worker_log = stack.log_dir / f"worker-{uuid.uuid4().hex[:6]}.log"
    stack.start_worker(concurrency)


def kill_group(proc: Any) -> None:
    """SIGKILL a process and all its children (the whole worker: parent, children, beat)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait(timeout=30)


def submit_batch(stack: Stack, files: list[Path], callback_url: str | None = None) -> str:
    data = {"callback_url": callback_url} if callback_url else {}
    response = requests.post(
        f"{stack.url}/api/v1/batches",
        files=[("files", (f.name, f.read_bytes())) for f in files],
        data=data,
        timeout=300,
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


class JobTable:
    """The truth: the jobs table, read directly."""

    def __init__(self, database_url: str) -> None:
        self.engine = sa.create_engine(database_url, pool_pre_ping=True)

    def rows(self, *, batch_id: str | None = None, ids: list[str] | None = None) -> list[Any]:
        query = "SELECT id, status, attempts, score, diagnosis, error_code, finished_at, "
        query += "lease_expires_at FROM jobs WHERE "
        params: dict[str, Any] = {}
        if batch_id is not None:
            query += "batch_id = :b"
            params["b"] = batch_id
        else:
            query += "id = ANY(:ids)"
            params["ids"] = ids or []
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(query), params).all())

    def done(self, **where: Any) -> int:
        try:
            return sum(r.status in TERMINAL for r in self.rows(**where))
        except sa.exc.OperationalError:
            return 0

    def wait_all_done(self, expected: int, timeout: float, what: str, **where: Any) -> float:
        """Seconds until all ``expected`` jobs are terminal (TimeoutError past ``timeout``)."""
        started = time.monotonic()
        wait_until(lambda: self.done(**where) >= expected, timeout, what, 0.25)
        return time.monotonic() - started

    def check_exactly_once(self, expected: int, max_attempts: int, **where: Any) -> dict[str, int]:
        """Every accepted job: one row, terminal, with one result (a score or an error,
        never both), no live lease; returns the attempts histogram."""
        rows = self.rows(**where)
        assert len(rows) == expected == len({r.id for r in rows})
        attempts: dict[str, int] = {}
        for r in rows:
            assert r.status in TERMINAL, r
            assert r.finished_at is not None and r.lease_expires_at is None, r
            if r.status == "succeeded":
                assert r.score is not None and r.diagnosis and r.error_code is None, r
            else:
                assert r.score is None and r.error_code, r
            assert 1 <= r.attempts <= max_attempts, r
            attempts[str(r.attempts)] = attempts.get(str(r.attempts), 0) + 1
        return attempts

    def dispose(self) -> None:
        self.engine.dispose()


class Receiver:
    """A callback receiver on 127.0.0.1 that answers 500 while ``failing`` is set
    (so callbacks keep retrying), then 200."""

    def __init__(self) -> None:
        self.failing = True
        self.requests: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                batch = str(body.get("batch_id"))
                with outer._lock:
                    status = 500 if outer.failing else 200
                    outer.requests.append((batch, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def answers(self, batch_id: str) -> list[int]:
        with self._lock:
            return [status for b, status in self.requests if b == batch_id]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()
