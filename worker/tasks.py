"""Celery tasks. Each delivery re-reads the job rows and acts only on jobs whose
conditional claim succeeds, so duplicates and redeliveries are harmless.

Single jobs and batch chunks share one pipeline (``worker.pipeline``); a chunk
runs the models on all its clips in one call. Tasks are ``shared_task``\\ s bound
to whichever app loads them (``worker.celery_app``), and publish through it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from shared import batches, evaluations, jobs, model_registry, recordings
from shared.db import is_unavailable
from shared.queue import (
    TASK_ANALYSE,
    TASK_ANALYSE_CHUNK,
    TASK_BATCH_CALLBACK,
    TASK_EVALUATE,
    TASK_RETENTION,
    TASK_SPECTROGRAM,
    TASK_SWEEP,
    Model,
    broker_epoch,
    publish_analysis,
    publish_callback,
    publish_chunk,
    publish_recording_work,
)
from shared.retention import purge
from shared.tables import utcnow
from worker import callbacks, metrics, recording_work, runtime
from worker.evaluation import evaluate_batch
from worker.pipeline import Pipeline, draw_spectrogram

log = logging.getLogger("tussis.worker")


# While the database is unreachable a delivery is retried this many seconds later
# (jittered), instead of failing and being acknowledged: the message is never lost,
# and the work resumes within seconds of the database's return.
DB_RETRY_MIN_S, DB_RETRY_MAX_S = 2.0, 5.0
CALLBACK_OVERDUE_S = 60.0


@contextmanager
def _retry_while_database_is_down(task: Task) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        countdown = random.uniform(DB_RETRY_MIN_S, DB_RETRY_MAX_S)
        log.warning(
            "%s: database unavailable (%s); retrying in %.0f s",
            task.name,
            type(exc).__name__,
            countdown,
        )
        # Celery publishes the retry before it acknowledges this delivery (late ack),
        # so the work stays in the broker throughout.
        # The tasks are declared with max_retries=None: retry() itself reads None as
        # "the task's default" (3), which an outage of a few seconds would exhaust.
        raise task.retry(countdown=countdown) from None


def _callback_publisher(task: Task) -> Callable[[str], None]:
    settings = runtime.current().settings
    return lambda batch_id: publish_callback(task.app, settings, batch_id)


def _pipeline(task: Task) -> Pipeline:
    settings = runtime.current().settings
    return Pipeline(
        runtime.current(),
        _callback_publisher(task),
        lambda job_ids: publish_recording_work(task.app, settings, job_ids),
    )


@shared_task(name=TASK_ANALYSE, bind=True, max_retries=None)
def analyse_job(self: Task, job_id: str) -> None:
    with _retry_while_database_is_down(self):
        _pipeline(self).run([job_id], coalesce=runtime.current().settings.coalesce_jobs)


@shared_task(name=TASK_ANALYSE_CHUNK, bind=True, max_retries=None)
def analyse_chunk(self: Task, job_ids: list[str]) -> None:
    with _retry_while_database_is_down(self):
        _analyse_chunk(self, list(job_ids))


def _analyse_chunk(self: Task, job_ids: list[str]) -> None:
    rt = runtime.current()
    job_ids = list(job_ids)
    if len(job_ids) > 1:
        with rt.session() as session:
            cut_off = jobs.any_running(session, job_ids)
            pins = jobs.pins_of(session, job_ids) if cut_off else {}
        if cut_off:
            # An earlier delivery of this chunk was cut off (its worker died): retry each
            # recording on its own, so one that kills its worker cannot take the others down.
            for job_id in job_ids:
                publish_chunk(self.app, rt.settings, [job_id], pins.get(job_id))
            return
    _pipeline(self).run(job_ids)


# A picture asked for before the child's renderer is loaded is asked again this later.
RENDERER_RETRY_S = 1.0


@shared_task(name=TASK_SPECTROGRAM, bind=True, max_retries=None)
def spectrogram(self: Task, job_id: str) -> bool:
    rt = runtime.current()
    if not rt.renderer_ready():
        raise self.retry(countdown=RENDERER_RETRY_S)
    with _retry_while_database_is_down(self):
        return draw_spectrogram(rt, job_id)


@shared_task(name=TASK_EVALUATE, bind=True, max_retries=None)
def evaluate(self: Task, batch_id: str, variant: str = evaluations.DEFAULT) -> str | None:
    """A finished batch's evaluation (or comparison), computed once and stored
    (worker/evaluation.py)."""
    with _retry_while_database_is_down(self):
        return evaluate_batch(runtime.current(), batch_id, variant)


@shared_task(name=TASK_BATCH_CALLBACK, bind=True, max_retries=None)
def batch_callback(self: Task, batch_id: str) -> None:
    """POST the completion notice; retried with jittered exponential backoff, never
    blocking analysis."""
    rt = runtime.current()
    # deliver() recorded the planned time on the batch, so the sweeper re-queues the
    # callback should this retry message be lost. The delay (callbacks.retry_delay)
    # is jittered and stays far below the broker's visibility timeout.
    with _retry_while_database_is_down(self):
        countdown = callbacks.deliver(rt, batch_id)
    if countdown is None:
        return
    raise self.retry(countdown=countdown)


@shared_task(name=TASK_SWEEP, bind=True)
def sweep(self: Task) -> int:
    """Re-publish jobs whose message was lost (broker restart, failed publish, dead host),
    finish batches whose completion was missed, and re-queue unsent callbacks."""
    rt = runtime.current()
    settings = rt.settings
    if rt.served_fingerprints:
        with rt.session() as session:
            model_registry.touch(session, rt.served_fingerprints)
    # A broker that came back empty lost every message published before it returned:
    # those jobs go out again now, not TUSSIS_REQUEUE_AFTER later.
    epoch = broker_epoch(settings)
    with rt.session() as session:
        lost = jobs.jobs_to_republish(
            session,
            settings.requeue_after_s,
            broker_epoch=epoch,
            # Leases are renewed by live workers, so an expired one means a dead worker;
            # a job still without one gets a new message at most once per lease.
            republish_gap_s=settings.lease_s,
        )
    for item in lost:
        if item.batch_id is None and not item.recording_id:
            publish_analysis(self.app, settings, item.job_id, item.model)
    publish_recording_work(self.app, settings, [i.job_id for i in lost if i.recording_id])
    # Batch items go back to their model's batch queue, so they never crowd out single
    # jobs, in chunks of one model each.
    by_model: dict[Model, list[str]] = {}
    for item in lost:
        if item.batch_id is not None and not item.recording_id:
            by_model.setdefault(item.model, []).append(item.job_id)
    size = max(1, settings.batch_chunk_size)
    for model, batch_items in by_model.items():
        for start in range(0, len(batch_items), size):
            publish_chunk(self.app, settings, batch_items[start : start + size], model)
    if lost:
        log.warning("re-published %d job(s) whose message was lost", len(lost))
    with rt.session() as session:
        # Work left for a model whose workers are all gone fails with its code, instead
        # of waiting for a worker that may never come back (the batches complete below).
        unserved = jobs.fail_unserved(session, settings.queue_name, settings.model_grace_s)
    if unserved:
        rt.notifier.jobs([u.job_id for u in unserved])
        metrics.job_finished("failed", "model_not_served", count=len(unserved))
        log.warning("%d job(s) failed: their model is no longer served", len(unserved))
    with rt.session() as session:
        running = batches.running_batches(session)
    for batch_id in running:
        with rt.session() as session:
            batches.complete_and_notify(
                session, batch_id, _callback_publisher(self), rt.notifier.batch
            )
    with rt.session() as session:
        unfinished = recordings.unfinished(session)
    for recording_id in unfinished:
        recording_work.complete(rt, recording_id)
    with rt.session() as session:
        # A retry's message is held by a worker until it is due, so a broker restart
        # loses it: a callback overdue by a minute is sent again (claim_callback lets
        # one attempt through however many messages there are).
        overdue = min(settings.requeue_after_s, CALLBACK_OVERDUE_S)
        unsent = batches.lost_callbacks(session, overdue)
    for batch_id in unsent:
        publish_callback(self.app, settings, batch_id)
    _gauge_queues(self)
    return len(lost)


def _gauge_queues(task: Task) -> None:
    """Messages waiting per queue, for ``tussis_queue_depth``: kombu asks the broker (Redis
    ``LLEN``; a row count on the embedded SQLite broker)."""
    settings = runtime.current().settings
    try:
        with task.app.connection_for_read() as conn:
            channel = conn.default_channel
            for kind, name in (
                ("single", settings.queue_name),
                ("batch", settings.batch_queue_name),
            ):
                # Not passive: Redis has no key for an empty queue, which a passive
                # declare reports as missing. The worker consumes both queues anyway.
                depth = channel.queue_declare(queue=name).message_count
                metrics.QUEUE_DEPTH.labels(kind).set(depth)
    except Exception as exc:  # a gauge is not worth failing the sweep for
        log.warning("queue depth: could not ask the broker (%s)", type(exc).__name__)


@shared_task(name=TASK_RETENTION)
def apply_retention() -> dict[str, int]:
    """Delete audio, results and orphaned files past their retention (``shared.retention``)."""
    rt = runtime.current()
    try:
        report = purge(
            rt.settings, rt.storage, now=utcnow(), recording_storage=rt.recording_storage
        )
    except SoftTimeLimitExceeded:
        # Each pass has committed what it deleted: the next run carries on from here.
        log.warning("retention: stopped at the task time limit; the next run continues")
        return {}
    counts = report.as_dict()
    log.info("retention: %s", ", ".join(f"{name}={n}" for name, n in counts.items()))
    return counts
