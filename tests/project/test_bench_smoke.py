"""`make bench` cannot rot: its bare loops (gate + diagnosis, and YAMNet alone), one
small zip through the real stack (PostgreSQL + Redis + gunicorn + a Celery worker),
then the cheap parts that reuse that running stack (single-job latency, status
polls, RSS) run on every CI pass. coldstart, poc and scale start models several
times over and are left to `make bench`.
Figures are printed, never asserted: a benchmark is not a timed test."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from shared.config import PROJECT_ROOT
from tests.conftest import YAMNET_MODEL, require


@pytest.mark.integration
def test_the_benchmark_runs_its_batch_part_end_to_end(
    fresh_postgres_url: str, redis_url: str
) -> None:
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    # A database of its own: no API key in it, so the stack serves loopback openly as
    # `make run` does (the suite's shared database holds other tests' keys).
    env = {
        **{k: v for k, v in os.environ.items() if k != "TUSSIS_API_KEYS"},
        "DATABASE_URL": fresh_postgres_url,
        "REDIS_URL": redis_url,
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    # One invocation, one stack: latency, polls and rss reuse the batch part's API and
    # worker, so they add seconds, not another start of the models.
    run = subprocess.run(
        [
            sys.executable,
            "scripts/bench.py",
            "bare-yamnet",
            "batch",
            "singles",
            "latency",
            "wakeup",
            "polls",
            "conditional",
            "waiters",
            "rss",
            "--children",
            "1",
            "--batch-files",
            "6",
            "--latency-jobs",
            "3",
            "--warmup",
            "1",
            "--poll-seconds",
            "1",
            "--wrk-connections",
            "4",
            "--waiters",
            "20",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = run.stdout
    assert re.search(r"clips/s \(the limit\)\s+\d+\.\d", out), out
    assert "'queued': 0, 'running': 0" in out, out
    assert re.search(r"pipeline efficiency .*: \d\.\d\d", out), out
    assert re.search(r"clips/s \(the issue bare limit\)\s+\d+\.\d", out), out
    assert re.search(r"YAMNet windows per clip .*\s\d+\.\d\d", out), out
    assert re.search(r"upload start -> terminal status\s+median\s+\d+\.\d+ ms .* n=3", out), out
    assert re.search(r"single jobs / the same recordings as a batch, same run: \d+\.\d\d", out), out
    assert re.search(r"worker commit -> client has the answer\s+median\s+\d+\.\d+ ms", out), out
    if shutil.which("wrk"):
        assert re.search(r"GET /healthz\s+\d+\.\d req/s", out), out
        assert re.search(r"job polls / healthz, req/s \(same run\)\s+\d+\.\d\d", out), out
        assert re.search(r"304 polls / healthz, req/s \(same run\)\s+\d+\.\d\d", out), out
        assert re.search(r"waiters held \(tussis_long_poll_waiters\)\s+20\b", out), out
        assert re.search(r"GET /healthz, 20 waiting\s+\d+\.\d req/s", out), out
    else:
        assert "polls: skipped: wrk is not installed" in out, out
    assert re.search(r"gunicorn worker 1\s+\d+\.\d MiB", out), out
    assert re.search(r"celery child 1 \(models loaded\)\s+\d+\.\d MiB", out), out


def test_the_benchmark_runs_its_evaluation_part() -> None:
    """The evaluation part (issue 24) needs no stack: a small cohort, in-process."""
    run = subprocess.run(
        [
            sys.executable,
            "scripts/bench.py",
            "evaluation",
            "--eval-items",
            "300",
            "--eval-groups",
            "60",
        ],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("TUSSIS_")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert re.search(r"a request now, from the stored row\s+median\s+\d+\.\d+ ms", run.stdout)
    assert re.search(r"a request before / a request now, same run\s+\d+x", run.stdout), run.stdout


@pytest.mark.integration
def test_the_long_recording_benchmark_parts_run(tmp_path: object) -> None:
    """`bench.py long` (a short recording through a real embedded stack, against the bare
    decode + YAMNet pass) and `decode-strategies` print their figures."""
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TUSSIS_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    args = ["long", "decode-strategies", "--hours", "0.05", "--children", "2", "--minutes", "2"]
    run = subprocess.run(
        [sys.executable, "scripts/bench.py", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    out = run.stdout
    assert re.search(r"upload finished -> result\s+\d+\.\d s \(3 segments", out), out
    assert re.search(r"API worker peak RSS while streaming .*\s\d+\.\d MiB", out), out
    assert re.search(r"counted / bare, same run .*\s\d+\.\d\d", out), out
    assert re.search(r"worker child peak RSS .*\d+\.\d, \d+\.\d MiB", out), out
    assert re.search(r"seek: samples off from the transcode .*\d+ \.\. \d+", out), out
