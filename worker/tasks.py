"""Celery tasks. Each delivery re-reads the job rows and acts only on jobs whose
conditional claim succeeds, so duplicates and redeliveries are harmless.

Single jobs and batch chunks share one pipeline (:func:`process`); a chunk runs
the models on all its clips in one call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import urllib.request
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded

from shared import batches, jobs, served_models
from shared.audio import AudioError, DecodedAudio, check_usable, decode
from shared.db import session_scope
from shared.models import Batch
from shared.queue import (
    TASK_ANALYSE,
    TASK_ANALYSE_CHUNK,
    TASK_BATCH_CALLBACK,
    TASK_SWEEP,
    publish_analysis,
    publish_callback,
    publish_chunk,
)
from shared.spectrogram import render, to_png
from shared.storage import AudioNotFound, spectrogram_key
from worker.app import celery, settings
from worker.runtime import Runtime

log = logging.getLogger("tussis.worker")
runtime = Runtime(settings)


@dataclass
class Claimed:
    job_id: str
    attempt: int
    audio_key: str
    batch_id: str | None
    audio: DecodedAudio | None = None
    done: bool = False


class Pipeline:
    def __init__(self) -> None:
        self.worker_id = jobs.this_worker_id()

    def fail(self, item: Claimed, code: str, message: str, **details: object) -> None:
        item.done = True
        ok = jobs.fail(
            settings.database_url,
            item.job_id,
            self.worker_id,
            item.attempt,
            code=code,
            message=message,
            **details,
        )
        if not ok:
            log.warning("job %s: claim lost before recording failure %s", item.job_id, code)

    def claim(self, job_ids: list[str]) -> list[Claimed]:
        claimed = []
        for job_id in job_ids:
            c = jobs.claim(
                settings.database_url,
                job_id,
                self.worker_id,
                max_attempts=settings.job_max_attempts,
                lease_s=settings.lease_s,
            )
            if c.outcome is jobs.ClaimOutcome.CLAIMED and c.job is not None:
                log.info("job %s: attempt %d on %s", job_id, c.attempt, self.worker_id)
                claimed.append(Claimed(job_id, c.attempt, c.job.audio_key, c.job.batch_id))
            else:
                log.info("job %s: %s, nothing to do", job_id, c.outcome.value)
                if c.outcome is jobs.ClaimOutcome.GAVE_UP and c.job is not None:
                    claimed.append(Claimed(job_id, 0, "", c.job.batch_id, done=True))
        return claimed

    def prepare(self, items: list[Claimed], sample_rate: int) -> list[Claimed]:
        ready = []
        for item in items:
            try:
                data = runtime.storage.get(item.audio_key)
            except AudioNotFound:
                self.fail(item, "audio_missing", "The uploaded recording is no longer stored.")
                continue
            try:
                audio = decode(data, sample_rate, max_seconds=settings.max_duration_s + 1)
                check_usable(
                    audio, settings.min_duration_s, settings.max_duration_s, settings.silence_dbfs
                )
            except AudioError as exc:
                self.fail(item, exc.code, exc.message)
                continue
            item.audio = audio
            ready.append(item)
        return ready

    def keep_spectrogram(self, item: Claimed, params: object) -> None:
        """Store the image the spectrogram renderer makes of this clip (best effort)."""
        try:
            assert item.audio is not None
            png = to_png(render(item.audio.samples, params))  # type: ignore[arg-type]
            runtime.storage.put(spectrogram_key(item.audio_key), png)
            jobs.mark_spectrogram(settings.database_url, item.job_id)
        except Exception:
            log.exception("job %s: could not store its spectrogram", item.job_id)

    def run(self, job_ids: list[str]) -> None:
        items = self.claim(job_ids)
        active = [i for i in items if not i.done]
        try:
            if active:
                self.analyse(active)
        except SoftTimeLimitExceeded:
            for item in active:
                if not item.done:
                    self.fail(
                        item,
                        "timeout",
                        f"Analysis took longer than {settings.task_soft_time_limit_s} s and "
                        "was stopped.",
                    )
        except Exception as exc:
            log.exception("jobs %s: unexpected error", [i.job_id for i in active])
            for item in active:
                if not item.done:
                    self.fail(
                        item,
                        "internal_error",
                        f"An unexpected error stopped the analysis ({type(exc).__name__}).",
                    )
        for batch_id in {i.batch_id for i in items if i.batch_id}:
            batches.complete_and_notify(celery, settings, batch_id)

    def analyse(self, items: list[Claimed]) -> None:
        if settings.drill_task_delay_s:
            time.sleep(settings.drill_task_delay_s)
        try:
            models = runtime.load_models()
        except Exception as exc:
            for item in items:
                self.fail(
                    item,
                    "model_unavailable",
                    f"The analysis model could not be loaded on the worker: {exc}",
                )
            return
        model, gate = models.diagnosis, models.cough_gate
        ready = self.prepare(items, model.sample_rate)
        for item in ready:
            self.keep_spectrogram(item, model.manifest.spectrogram)
        cough: dict[str, tuple[bool | None, float | None]] = {i.job_id: (None, None) for i in ready}
        if gate is not None and ready:
            if gate.sample_rate != model.sample_rate:
                raise RuntimeError("the cough gate and the model need different sample rates")
            verdicts = gate.predict([i.audio.samples for i in ready])  # type: ignore[union-attr]
            passed = []
            for item, verdict in zip(ready, verdicts, strict=True):
                detected = verdict.diagnosis == gate.manifest.positive_label
                cough[item.job_id] = (detected, verdict.score)
                if detected:
                    passed.append(item)
                else:
                    self.fail(
                        item,
                        "no_cough_detected",
                        "No cough was found in this recording, so it was not analysed; "
                        "record one or more coughs and try again.",
                        cough_detected=False,
                        cough_score=verdict.score,
                    )
            ready = passed
        if not ready:
            return
        predictions = model.predict([i.audio.samples for i in ready])  # type: ignore[union-attr]
        for item, prediction in zip(ready, predictions, strict=True):
            detected, score = cough[item.job_id]
            item.done = True
            ok = jobs.succeed(
                settings.database_url,
                item.job_id,
                self.worker_id,
                item.attempt,
                diagnosis=prediction.diagnosis,
                score=prediction.score,
                threshold=model.manifest.threshold,
                model_id=model.id,
                model_version=model.version,
                duration_s=item.audio.duration_s,  # type: ignore[union-attr]
                cough_detected=detected,
                cough_score=score,
            )
            if not ok:
                log.warning(
                    "job %s: claim lost (deleted or taken over); result dropped", item.job_id
                )


@celery.task(name=TASK_ANALYSE)
def analyse_job(job_id: str) -> None:
    Pipeline().run([job_id])


@celery.task(name=TASK_ANALYSE_CHUNK)
def analyse_chunk(job_ids: list[str]) -> None:
    job_ids = list(job_ids)
    if len(job_ids) > 1 and jobs.any_running(settings.database_url, job_ids):
        # An earlier delivery of this chunk was cut off (its worker died): retry each
        # recording on its own, so one that kills its worker cannot take the others down.
        for job_id in job_ids:
            publish_chunk(celery, settings, [job_id])
        return
    Pipeline().run(job_ids)


def callback_body(batch: Batch, counts: batches.Counts) -> bytes:
    return json.dumps(
        {
            "batch_id": batch.id,
            "status": batch.status,
            "total": counts.total,
            "counts": counts.as_dict(),
            "finished_at": batch.finished_at.isoformat().replace("+00:00", "Z")
            if batch.finished_at
            else None,
        },
        separators=(",", ":"),
    ).encode()


def signature(body: bytes) -> str:
    return "sha256=" + hmac.new(settings.callback_secret.encode(), body, hashlib.sha256).hexdigest()


@celery.task(name=TASK_BATCH_CALLBACK, bind=True, max_retries=None)
def batch_callback(self, batch_id: str) -> None:  # type: ignore[no-untyped-def]
    """POST the completion notice; retried with exponential backoff, never blocking analysis."""
    with session_scope(settings.database_url) as session:
        batch = session.get(Batch, batch_id)
        if batch is None or batch.callback_state != batches.CALLBACK_PENDING:
            return
        body = callback_body(batch, batches.counts(session, batch_id))
        url, attempts = batch.callback_url, batch.callback_attempts
    assert url is not None
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "tussis-callback/1",
        "X-Tussis-Batch": batch_id,
    }
    if settings.callback_secret:
        headers["X-Tussis-Signature"] = signature(body)
    else:
        log.warning(
            "batch %s: TUSSIS_CALLBACK_SECRET is not set; the callback is unsigned", batch_id
        )
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            ok = 200 <= response.status < 300
    except Exception as exc:
        log.warning("batch %s: callback to %s failed (%s)", batch_id, url, exc)
        ok = False
    if ok:
        batches.record_callback(settings.database_url, batch_id, batches.CALLBACK_DELIVERED)
        return
    attempts += 1
    if attempts >= settings.callback_max_attempts:
        batches.record_callback(settings.database_url, batch_id, batches.CALLBACK_FAILED)
        log.error("batch %s: giving up on the callback after %d attempts", batch_id, attempts)
        return
    batches.record_callback(settings.database_url, batch_id, batches.CALLBACK_PENDING)
    # Backoff stays far below the broker's visibility timeout (see design notes).
    countdown = min(2 ** (attempts - 1), 300, settings.visibility_timeout_s // 4)
    raise self.retry(countdown=countdown)


@celery.task(name=TASK_SWEEP)
def sweep() -> int:
    """Re-publish jobs whose message was lost (broker restart, failed publish, dead host),
    finish batches whose completion was missed, and re-queue unsent callbacks."""
    if runtime.served_fingerprints:
        served_models.touch(settings.database_url, runtime.served_fingerprints)
    lost = jobs.jobs_to_republish(settings.database_url, settings.requeue_after_s)
    singles = [item.job_id for item in lost if item.batch_id is None]
    batch_items = [item.job_id for item in lost if item.batch_id is not None]
    for job_id in singles:
        publish_analysis(celery, settings, job_id)
    # Batch items go back to the batch queue, so they never crowd out single jobs.
    size = max(1, settings.batch_chunk_size)
    for start in range(0, len(batch_items), size):
        publish_chunk(celery, settings, batch_items[start : start + size])
    if lost:
        log.warning("re-published %d job(s) whose message was lost", len(lost))
    for batch_id in batches.running_batches(settings.database_url):
        batches.complete_and_notify(celery, settings, batch_id)
    for batch_id in batches.lost_callbacks(settings.database_url, settings.requeue_after_s):
        publish_callback(celery, settings, batch_id)
    return len(lost)
