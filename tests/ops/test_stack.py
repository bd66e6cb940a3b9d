"""The real stack (gunicorn with two workers, a celery worker with beat, PostgreSQL,
Redis) with JSON logs and worker metrics on: one job goes through, then both
metrics endpoints are scraped and every log line is read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.config import PROJECT_ROOT, Settings, normalise_database_url
from tests.conftest import base_settings, migrate
from tests.ops.test_metrics import samples, value
from tests.stack import Stack, free_port, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["services", "embedded"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """PostgreSQL + Redis as deployed, and the embedded SQLite database and broker."""
    bundle = PROJECT_ROOT / "models" / "default"
    if request.param == "embedded":
        settings = base_settings(tmp_path, model_bundle=bundle, sweep_interval_s=1.0)
        migrate(settings.database_url)
        return settings
    # A database of its own: the session's shared one holds the heartbeat of other
    # tests' workers, and this test starts with none.
    database_url = normalise_database_url(request.getfixturevalue("fresh_postgres_url"))
    migrate(database_url)
    return base_settings(
        tmp_path,
        database_url=database_url,
        broker_url=request.getfixturevalue("redis_url"),
        model_bundle=bundle,
        sweep_interval_s=1.0,
    )


def scrape(url: str) -> dict:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return samples(response.text)


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_job_is_counted_by_the_api_and_the_worker_and_logged_as_json(
    settings: Settings, tmp_path: Path, cough_file: Path
) -> None:
    worker_port = free_port()
    stack = Stack(
        settings,
        tmp_path,
        TUSSIS_LOG_FORMAT="json",
        TUSSIS_WORKER_METRICS_PORT=worker_port,
    )
    worker_metrics = f"http://127.0.0.1:{worker_port}/metrics"
    try:
        stack.start_api()
        # The API answers, no worker serves yet: ready to accept, not to analyse.
        assert requests.get(f"{stack.url}/readyz", timeout=30).status_code == 200
        not_ready = requests.get(f"{stack.url}/readyz?require=workers", timeout=30)
        assert not_ready.status_code == 503
        assert not_ready.json()["error"]["code"] == "no_worker"
        assert not_ready.json()["checks"]["workers"] != "ok"

        stack.start_worker()
        ready = requests.get(f"{stack.url}/readyz?require=workers", timeout=30)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "broker": "ok", "workers": "ok"}

        response = stack.submit(cough_file.read_bytes(), cough_file.name)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        job = stack.wait_done(job_id)
        assert job["status"] == "succeeded", job

        # Two gunicorn workers: whichever answers the scrape, it sums both.
        api = [scrape(f"{stack.url}/metrics") for _ in range(4)]
        for scraped in api:
            route = {"route": "/api/v1/jobs", "method": "POST", "status": "202"}
            assert value(scraped, "tussis_http_requests_total", **route) == 1
            assert value(scraped, "tussis_jobs_submitted_total", kind="single") == 1
            polls = value(
                scraped,
                "tussis_http_requests_total",
                route="/api/v1/jobs/<job_id>",
                method="GET",
                status="200",
            )
            assert polls >= 1

        worker = wait_until(
            lambda: (
                (s := scrape(worker_metrics))
                and value(s, "tussis_queue_depth", queue="single") == 0
                and ("tussis_queue_depth", (("queue", "batch"),)) in s
                and s
            ),
            30,
            "the sweeper to gauge the queues",
        )
        processed = "tussis_jobs_processed_total"
        assert value(worker, processed, outcome="succeeded", code="") == 1
        for stage in ("decode", "gate", "model", "write"):
            count = value(worker, "tussis_stage_duration_seconds_count", stage=stage)
            total = value(worker, "tussis_stage_duration_seconds_sum", stage=stage)
            assert count == 1 and total > 0, stage
        assert value(worker, "tussis_model_load_seconds_count") >= 1
    finally:
        stack.stop()

    # Every line of the API's log (gunicorn's own, its access lines, the app's) is a
    # JSON object with the fixed fields; the line about the new job names it.
    api_lines = json_lines(tmp_path / "api.log")
    assert api_lines and all(
        {"timestamp", "level", "logger", "message"} <= set(line) for line in api_lines
    )
    assert any(line["logger"] == "gunicorn.access" for line in api_lines)
    queued = [line for line in api_lines if line.get("job_id") == job_id]
    assert queued and queued[0]["owner"] == "anonymous", queued
    # The worker's logging lines are JSON too (Celery prints its banner with print());
    # those about the job carry its id and the child's worker id.
    worker_lines = [
        json.loads(line)
        for line in stack.worker_log.read_text().splitlines()
        if line.startswith("{")
    ]
    about_job = [line for line in worker_lines if line.get("job_id") == job_id]
    assert about_job, stack.tail(stack.worker_log)
    assert all(line.get("worker_id") for line in about_job)
