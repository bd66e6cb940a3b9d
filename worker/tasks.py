"""Celery tasks. Each delivery re-reads the job rows and acts only on jobs whose
conditional claim succeeds, so duplicates and redeliveries are harmless.

Single jobs and batch chunks share one pipeline (``worker.pipeline``); a chunk
runs the models on all its clips in one call. Tasks are ``shared_task``\\ s bound
to whichever app loads them (``worker.celery_app``), and publish through it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from shared import batches, jobs, model_registry
from shared.queue import (
    TASK_ANALYSE,
    TASK_ANALYSE_CHUNK,
    TASK_BATCH_CALLBACK,
    TASK_RETENTION,
    TASK_SWEEP,
    publish_analysis,
    publish_callback,
    publish_chunk,
)
from shared.retention import purge
from shared.tables import utcnow
from worker import callbacks, runtime
from worker.pipeline import Pipeline

log = logging.getLogger("tussis.worker")


def _callback_publisher(task: Task) -> Callable[[str], None]:
    settings = runtime.current().settings
    return lambda batch_id: publish_callback(task.app, settings, batch_id)


@shared_task(name=TASK_ANALYSE, bind=True)
def analyse_job(self: Task, job_id: str) -> None:
    Pipeline(runtime.current(), _callback_publisher(self)).run([job_id])


@shared_task(name=TASK_ANALYSE_CHUNK, bind=True)
def analyse_chunk(self: Task, job_ids: list[str]) -> None:
    rt = runtime.current()
    job_ids = list(job_ids)
    if len(job_ids) > 1:
        with rt.session() as session:
            cut_off = jobs.any_running(session, job_ids)
        if cut_off:
            # An earlier delivery of this chunk was cut off (its worker died): retry each
            # recording on its own, so one that kills its worker cannot take the others down.
            for job_id in job_ids:
                publish_chunk(self.app, rt.settings, [job_id])
            return
    Pipeline(rt, _callback_publisher(self)).run(job_ids)


@shared_task(name=TASK_BATCH_CALLBACK, bind=True, max_retries=None)
def batch_callback(self: Task, batch_id: str) -> None:
    """POST the completion notice; retried with jittered exponential backoff, never
    blocking analysis."""
    rt = runtime.current()
    # deliver() recorded the planned time on the batch, so the sweeper re-queues the
    # callback should this retry message be lost. The delay (callbacks.retry_delay)
    # is jittered and stays far below the broker's visibility timeout.
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
    with rt.session() as session:
        lost = jobs.jobs_to_republish(session, settings.requeue_after_s)
    singles = [item.job_id for item in lost if item.batch_id is None]
    batch_items = [item.job_id for item in lost if item.batch_id is not None]
    for job_id in singles:
        publish_analysis(self.app, settings, job_id)
    # Batch items go back to the batch queue, so they never crowd out single jobs.
    size = max(1, settings.batch_chunk_size)
    for start in range(0, len(batch_items), size):
        publish_chunk(self.app, settings, batch_items[start : start + size])
    if lost:
        log.warning("re-published %d job(s) whose message was lost", len(lost))
    with rt.session() as session:
        running = batches.running_batches(session)
    for batch_id in running:
        with rt.session() as session:
            batches.complete_and_notify(session, batch_id, _callback_publisher(self))
    with rt.session() as session:
        unsent = batches.lost_callbacks(session, settings.requeue_after_s)
    for batch_id in unsent:
        publish_callback(self.app, settings, batch_id)
    return len(lost)


@shared_task(name=TASK_RETENTION)
def apply_retention() -> dict[str, int]:
    """Delete audio, results and orphaned files past their retention (``shared.retention``)."""
    rt = runtime.current()
    try:
        report = purge(rt.settings, rt.storage, now=utcnow())
    except SoftTimeLimitExceeded:
        # Each pass has committed what it deleted: the next run carries on from here.
        log.warning("retention: stopped at the task time limit; the next run continues")
        return {}
    counts = report.as_dict()
    log.info("retention: %s", ", ".join(f"{name}={n}" for name, n in counts.items()))
    return counts
