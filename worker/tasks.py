"""Celery tasks. Each delivery re-reads the job row and acts only if its
conditional claim succeeds, so duplicates and redeliveries are harmless."""

from __future__ import annotations

import logging
import time

from celery.exceptions import SoftTimeLimitExceeded

from shared import jobs, served_models
from shared.audio import AudioError, check_usable, decode
from shared.queue import TASK_ANALYSE, TASK_SWEEP, publish_analysis
from shared.storage import AudioNotFound
from worker.app import celery, settings
from worker.runtime import Runtime

log = logging.getLogger("tussis.worker")
runtime = Runtime(settings)


@celery.task(name=TASK_ANALYSE)
def analyse_job(job_id: str) -> None:
    worker_id = jobs.this_worker_id()
    claim = jobs.claim(
        settings.database_url,
        job_id,
        worker_id,
        max_attempts=settings.job_max_attempts,
        lease_s=settings.lease_s,
    )
    if claim.outcome is not jobs.ClaimOutcome.CLAIMED:
        log.info("job %s: %s, nothing to do", job_id, claim.outcome.value)
        return
    assert claim.job is not None
    attempt = claim.attempt
    log.info("job %s: attempt %d on %s", job_id, attempt, worker_id)

    def fail(code: str, message: str, **details: object) -> None:
        if not jobs.fail(
            settings.database_url,
            job_id,
            worker_id,
            attempt,
            code=code,
            message=message,
            **details,
        ):
            log.warning("job %s: claim lost before recording failure %s", job_id, code)

    try:
        if settings.drill_task_delay_s:
            time.sleep(settings.drill_task_delay_s)
        try:
            models = runtime.load_models()
        except Exception as exc:
            fail(
                "model_unavailable", f"The analysis model could not be loaded on the worker: {exc}"
            )
            return
        try:
            data = runtime.storage.get(claim.job.audio_key)
        except AudioNotFound:
            fail("audio_missing", "The uploaded recording is no longer stored.")
            return
        model, gate = models.diagnosis, models.cough_gate
        try:
            audio = decode(data, model.sample_rate, max_seconds=settings.max_duration_s + 1)
            check_usable(
                audio, settings.min_duration_s, settings.max_duration_s, settings.silence_dbfs
            )
        except AudioError as exc:
            fail(exc.code, exc.message)
            return
        cough_detected: bool | None = None
        cough_score: float | None = None
        if gate is not None:
            samples = audio.samples
            if gate.sample_rate != model.sample_rate:
                samples = decode(data, gate.sample_rate, settings.max_duration_s + 1).samples
            verdict = gate.predict([samples])[0]
            cough_score = verdict.score
            cough_detected = verdict.diagnosis == gate.manifest.positive_label
            if not cough_detected:
                fail(
                    "no_cough_detected",
                    "No cough was found in this recording, so it was not analysed; "
                    "record one or more coughs and try again.",
                    cough_detected=False,
                    cough_score=cough_score,
                )
                return
        prediction = model.predict([audio.samples])[0]
        done = jobs.succeed(
            settings.database_url,
            job_id,
            worker_id,
            attempt,
            diagnosis=prediction.diagnosis,
            score=prediction.score,
            threshold=model.manifest.threshold,
            model_id=model.id,
            model_version=model.version,
            duration_s=audio.duration_s,
            cough_detected=cough_detected,
            cough_score=cough_score,
        )
        if not done:
            log.warning("job %s: claim lost (deleted or taken over); result discarded", job_id)
    except SoftTimeLimitExceeded:
        fail(
            "timeout",
            f"Analysis took longer than {settings.task_soft_time_limit_s} s and was stopped.",
        )
    except Exception as exc:
        log.exception("job %s: unexpected error", job_id)
        fail("internal_error", f"An unexpected error stopped the analysis ({type(exc).__name__}).")


@celery.task(name=TASK_SWEEP)
def sweep() -> int:
    """Re-publish jobs whose message was lost (broker restart, failed publish, dead host)."""
    if runtime.served_fingerprints:
        served_models.touch(settings.database_url, runtime.served_fingerprints)
    job_ids = jobs.jobs_to_republish(settings.database_url, settings.requeue_after_s)
    for job_id in job_ids:
        publish_analysis(celery, settings, job_id)
    if job_ids:
        log.warning("re-published %d job(s) whose message was lost: %s", len(job_ids), job_ids)
    return len(job_ids)
