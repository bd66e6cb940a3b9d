"""The Celery application's configuration, shared by the API (which only
publishes) and the worker (which consumes). Neither side's imports pull in
the other: task bodies live in ``worker.tasks``, and the API publishes by
task name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from celery import Celery
from kombu import Queue

from shared import embedded_broker
from shared.config import Settings, SettingsError
from shared.tables import utcnow

TASK_ANALYSE = "tussis.analyse_job"
TASK_SWEEP = "tussis.sweep"
TASK_ANALYSE_CHUNK = "tussis.analyse_chunk"
TASK_BATCH_CALLBACK = "tussis.batch_callback"
TASK_RETENTION = "tussis.retention"
TASK_SPECTROGRAM = "tussis.spectrogram"
TASK_EVALUATE = "tussis.evaluate_batch"


def check_time_limits(settings: Settings) -> None:
    """A task must end before Redis would re-deliver it while it is still running."""
    if settings.task_time_limit_s >= settings.visibility_timeout_s:
        raise SettingsError(
            "TUSSIS_TASK_TIME_LIMIT must be lower than TUSSIS_VISIBILITY_TIMEOUT "
            f"({settings.task_time_limit_s} >= {settings.visibility_timeout_s})"
        )


Model = tuple[str, str] | None  # (name, version) a job is pinned to; None: any worker


def single_queue(settings: Settings, model: Model) -> str:
    """Where a single job waits: its model's queue, consumed only by workers that serve
    that model (``<TUSSIS_QUEUE>.m.<name>@<version>``); a job pinned to no model (accepted
    before any worker registered one) waits on ``TUSSIS_QUEUE``, which every worker takes."""
    return (
        settings.queue_name if model is None else f"{settings.queue_name}.m.{model[0]}@{model[1]}"
    )


def batch_queue(settings: Settings, model: Model) -> str:
    """Where a batch chunk of ``model`` waits (as :func:`single_queue`, beside
    ``<TUSSIS_QUEUE>.batch``)."""
    if model is None:
        return settings.batch_queue_name
    return f"{settings.batch_queue_name}.m.{model[0]}@{model[1]}"


def worker_queues(settings: Settings, models: list[tuple[str, str]]) -> tuple[Queue, ...]:
    """What a worker serving ``models`` consumes: the shared queues (sweeps, retention,
    pictures, evaluations, callbacks, long recordings, unpinned work) and, per model, its
    single-job queue and its batch queue, in that order, so a single job never waits
    behind a batch."""
    names = [settings.queue_name, settings.batch_queue_name]
    for model in models:
        names += [single_queue(settings, model), batch_queue(settings, model)]
    return tuple(Queue(name) for name in dict.fromkeys(names))


def celery_config(settings: Settings) -> dict[str, Any]:
    check_time_limits(settings)
    transport: dict[str, Any] = {}
    if not settings.embedded_broker:
        # kombu's SQLAlchemy transport hands every option to create_engine(), so
        # these are for Redis only. The visibility timeout must exceed the task
        # time limit, or Redis re-delivers tasks that are still running.
        transport["visibility_timeout"] = settings.visibility_timeout_s
        # A dead broker must fail a publish within seconds, not hang the request.
        transport["socket_connect_timeout"] = settings.publish_timeout_s
        transport["socket_timeout"] = max(settings.publish_timeout_s, 10.0)
    return {
        "broker_url": embedded_broker.kombu_url(settings.broker_url),
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.publish_timeout_s,
        "task_default_queue": settings.queue_name,
        # Two queues: single jobs, and batch chunks. A worker takes from both in
        # turn, so a single job waits at most for one chunk, never a whole batch.
        "task_queues": (Queue(settings.queue_name), Queue(settings.batch_queue_name)),
        "task_serializer": "json",
        "accept_content": ["json"],
        # The SQL row holds results and state; Celery's result backend is not used.
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_publish_retry": True,
        "task_publish_retry_policy": {
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency,
        # Model loading in a new child takes seconds; the 4 s default kills replacements.
        "worker_proc_alive_timeout": settings.worker_proc_alive_timeout_s,
        # A replacement child loads the models again in worker_process_init (worker.lifecycle).
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child or None,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
        "beat_schedule": {
            "republish-lost-jobs": {
                "task": TASK_SWEEP,
                "schedule": settings.sweep_interval_s,
                "options": {"expires": settings.sweep_interval_s},
            },
            # Deletes audio, results and orphans past their retention (shared.retention).
            # A run that was not started within one interval is dropped: the next one
            # does the same work.
            "retention": {
                "task": TASK_RETENTION,
                "schedule": settings.retention_interval_s,
                "options": {
                    "expires": settings.retention_interval_s,
                    "queue": settings.queue_name,
                },
            },
        },
    }


def make_celery(settings: Settings, name: str = "tussis") -> Celery:
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


# Set in the broker by the first sweeper that finds it missing: its value is when this
# incarnation of the broker was first seen. A Redis that restarts without persistence
# (or is flushed, or fails over to an empty replica) comes back without it and without
# every queued message; a persistent one keeps both.
EPOCH_KEY = "tussis:broker-epoch:{queue}"


def broker_epoch(settings: Settings) -> datetime | None:
    """Since when the broker has kept its messages: jobs published before this may have
    lost their message and are re-published by the sweeper at once, instead of
    ``TUSSIS_REQUEUE_AFTER`` later. None for a broker that cannot say (the embedded one)
    or cannot be reached now."""
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(
        settings.broker_url,
        socket_connect_timeout=settings.publish_timeout_s,
        socket_timeout=settings.publish_timeout_s,
    )
    key = EPOCH_KEY.format(queue=settings.queue_name)
    try:
        client.set(key, utcnow().isoformat(), nx=True)
        value = client.get(key)
    except redis.RedisError:
        return None
    finally:
        client.close()
    try:
        text = value.decode() if isinstance(value, bytes) else value
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def publish_analysis(app: Celery, settings: Settings, job_id: str, model: Model = None) -> None:
    app.send_task(TASK_ANALYSE, args=[job_id], queue=single_queue(settings, model))


def publish_chunk(app: Celery, settings: Settings, job_ids: list[str], model: Model = None) -> None:
    """A chunk of one batch's items: all of them pinned to ``model`` (a batch's model)."""
    app.send_task(TASK_ANALYSE_CHUNK, args=[job_ids], queue=batch_queue(settings, model))


def publish_recording_work(app: Celery, settings: Settings, job_ids: list[str]) -> None:
    """A long recording's decoding pass or segments, one job per message on the batch
    queue (so every worker child takes its share). Each message may run as long as the
    decoding pass of the longest recording may take (``prepare_time_limit_s``): a
    segment takes about a second, hours of compressed audio take minutes to decode."""
    hard = settings.prepare_time_limit_s
    for job_id in job_ids:
        app.send_task(
            TASK_ANALYSE_CHUNK,
            args=[[job_id]],
            queue=settings.batch_queue_name,
            time_limit=hard,
            soft_time_limit=hard - max(5, hard // 10),
        )


def publish_spectrogram(app: Celery, settings: Settings, job_id: str) -> None:
    """Draw a job's picture: asked for by whoever fetches it, never on the analysis path."""
    app.send_task(TASK_SPECTROGRAM, args=[job_id], queue=settings.queue_name)


def publish_evaluation(
    app: Celery,
    settings: Settings,
    batch_id: str,
    variant: str | None = None,
    model: Model = None,
) -> None:
    """Compute a finished batch's evaluation (or ``variant`` of it, a comparison) once
    (shared/evaluations.py), beside the batch chunks, never ahead of single jobs: on the
    queue of the batch's ``model``, whose workers hold its bundle and so know what it
    was trained on (a worker without it could not leave those items out)."""
    args = [batch_id] if variant is None else [batch_id, variant]
    app.send_task(TASK_EVALUATE, args=args, queue=batch_queue(settings, model))


def publish_callback(app: Celery, settings: Settings, batch_id: str) -> None:
    app.send_task(TASK_BATCH_CALLBACK, args=[batch_id], queue=settings.batch_queue_name)
