"""The worker's Prometheus metrics, and the HTTP server that Prometheus scrapes.

Each ``celery worker`` serves one endpoint (``TUSSIS_WORKER_METRICS_PORT``) from its
parent process. The prefork children, which run the jobs, count into files in
``PROMETHEUS_MULTIPROC_DIR`` (worker/celery_app.py prepares it before anything
imports prometheus_client); a scrape of the parent sums them, so a child that is
replaced (``TUSSIS_WORKER_MAX_TASKS_PER_CHILD``) or killed loses none of its counts.
Why a port per worker rather than a pushgateway or Flower: docs/operations.md.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger("tussis.worker")

JOBS_PROCESSED = Counter(
    "tussis_jobs_processed_total",
    "Jobs that reached a terminal state on this worker, by outcome (succeeded or failed) and "
    "error code (empty on success).",
    ["outcome", "code"],
)
STAGE_SECONDS = Histogram(
    "tussis_stage_duration_seconds",
    "Time spent in each stage of a delivery (a single job or a batch chunk): decode (fetch, "
    "decode and check the audio), gate (the cough gate), model (the diagnosis model), write "
    "(record the results).",
    ["stage"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MODEL_LOAD_SECONDS = Histogram(
    "tussis_model_load_seconds",
    "Time for a worker child to load and warm its models before its first job.",
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
QUEUE_DEPTH = Gauge(
    "tussis_queue_depth",
    "Messages waiting in each broker queue (single jobs, batch chunks), as last measured by "
    "the sweeper.",
    ["queue"],
    multiprocess_mode="mostrecent",
)

STAGES = ("decode", "gate", "model", "write")


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time a block as one stage of the pipeline."""
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(name).observe(time.perf_counter() - started)


def job_finished(outcome: str, code: str = "", count: int = 1) -> None:
    JOBS_PROCESSED.labels(outcome, code).inc(count)


def serve(port: int) -> None:
    """In the Celery parent: answer scrapes with the sum over every child's files."""
    if not port:
        return
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        # Metrics are not worth refusing to analyse recordings for.
        log.warning("worker metrics: cannot listen on port %d (%s); none served", port, exc)
        return
    log.info("worker metrics on port %d (/metrics)", port)


def child_exited(pid: int | None = None) -> None:
    """A child's live gauges stop counting when it exits (its counters stay summed)."""
    mark_process_dead(pid or os.getpid())
