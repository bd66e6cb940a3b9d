"""The sweeper's queue-depth gauge counts the messages waiting in each queue, on Redis
and on the embedded SQLite broker (no worker consumes them here)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import REGISTRY

from shared.config import Settings
from shared.queue import TASK_ANALYSE, TASK_ANALYSE_CHUNK, make_celery
from worker import runtime, tasks


def depth(queue: str) -> float | None:
    return REGISTRY.get_sample_value("tussis_queue_depth", {"queue": queue})


def test_the_gauge_counts_waiting_messages_per_queue(settings: Settings) -> None:
    app = make_celery(settings)
    runtime.configure(settings)
    for n in range(3):
        app.send_task(TASK_ANALYSE, args=[f"job-{n}"], queue=settings.queue_name)
    app.send_task(TASK_ANALYSE_CHUNK, args=[["a", "b"]], queue=settings.batch_queue_name)
    tasks._gauge_queues(SimpleNamespace(app=app))  # type: ignore[arg-type]
    assert (depth("single"), depth("batch")) == (3, 1)

    with app.connection_for_write() as conn:  # drained: the gauge follows
        for name in (settings.queue_name, settings.batch_queue_name):
            conn.default_channel.queue_purge(name)
    tasks._gauge_queues(SimpleNamespace(app=app))  # type: ignore[arg-type]
    assert (depth("single"), depth("batch")) == (0, 0)
