"""The analysis of one delivery (a single job or a batch chunk): claim each job
with a compare-and-set on its row, decode and check the audio, run the cough
gate and the diagnosis model on all clips at once, and record exactly one
terminal state per claimed job. Duplicate deliveries find nothing to claim.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

from ml import acoustic, yamnet
from ml.model import Model, Prediction
from ml.spectrogram import picture
from shared import batches, jobs, logs
from shared.audio import AudioError, DecodedAudio, check_usable, decode
from shared.db import is_unavailable
from shared.storage import AudioNotFound, spectrogram_key
from shared.tables import Job
from worker import metrics, recording_work
from worker.runtime import Runtime

log = logging.getLogger("tussis.worker")


@dataclass(frozen=True)
class GateVerdict:
    """What the cough gate said of one recording (all None when the gate is off)."""

    detected: bool | None = None
    score: float | None = None
    segments: list[list[float]] | None = None
    threshold: float | None = None


# A score that is not a number (audio the API's checks let through, such as extreme
# sample values) is never stored: it would make every JSON listing of the job invalid.
NOT_A_SCORE = (
    "undecodable_audio",
    "The model could not score this recording (its samples gave no valid number); send an "
    "ordinary recording.",
)

# Below this, the loudest 0.975 s of a recording is too faint to make out a cough.
QUIET_DBFS = -45.0
# A loudest moment less than this above the typical level: nothing stands out.
STANDS_OUT_DB = 6.0
# The evaluation's "active share" baseline: frames within this of the clip's loudest.
ACTIVE_DB = 30.0


def baseline_features(audio: DecodedAudio) -> dict[str, float | None]:
    """A scored clip's trivial features, stored on its job for the evaluation's
    baselines (worker/evaluation.py) while the decoded samples are at hand: its active
    share (ml.acoustic's trimming feature, within :data:`ACTIVE_DB`) and its RMS level
    (ml.acoustic's loudness baseline). Never fails a job: None when not computable."""
    try:
        active = float(acoustic.trimming(audio.samples, audio.sample_rate, ACTIVE_DB)[1])
        level = float(acoustic.loudness(audio.samples)[0])
    except Exception as exc:  # a baseline is never worth a result
        log.warning("baseline features not computed: %s", exc)
        return {"active_share": None, "loudness_db": None}
    finite = math.isfinite
    return {
        "active_share": active if finite(active) else None,
        "loudness_db": level if finite(level) else None,
    }


def no_cough_message(samples: np.ndarray) -> str:
    """Why the gate refused, in words a person can act on."""
    frames = yamnet.frame(samples).astype(np.float64)
    loudness = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loudest, typical = float(loudness.max()), float(np.median(loudness))
    if loudest < QUIET_DBFS:
        return (
            "The recording is too quiet to make out a cough, so it was not analysed; "
            "hold the microphone closer (about 30 cm) and cough again."
        )
    if loudest - typical < STANDS_OUT_DB and len(loudness) > 2:
        return (
            "The background noise is as loud as everything else in the recording, so no cough "
            "stands out and it was not analysed; record somewhere quieter and cough again."
        )
    return (
        "No cough-like sound was found in this recording, so it was not analysed; "
        "record one or more coughs (not speech, breathing or other sounds) and try again."
    )


@dataclass
class Claimed:
    job_id: str
    attempt: int
    audio_key: str
    batch_id: str | None
    audio: DecodedAudio | None = None
    done: bool = False
    # A long recording's decoding pass (segment None) or one of its segments.
    recording_id: str | None = None
    segment: int | None = None
    # The model the job is pinned to at intake (name, version); None: this worker's default.
    model: tuple[str, str] | None = None


class Pipeline:
    """One delivery's work: claim the jobs, decode, gate, predict, record.

    ``publish_callback`` queues a batch's completion callback; the task passes
    one bound to its Celery app, so this module needs no app of its own.
    """

    def __init__(
        self,
        rt: Runtime,
        publish_callback: Callable[[str], None],
        publish_segments: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.runtime = rt
        self.settings = rt.settings
        self.publish_callback = publish_callback
        self.publish_segments = publish_segments
        self.worker_id = jobs.this_worker_id()

    def publish_work(self, job_ids: list[str]) -> None:
        """Queue a long recording's segments; a failed publish is left to the sweeper."""
        try:
            if self.publish_segments is None:
                raise RuntimeError("this pipeline cannot publish")
            self.publish_segments(job_ids)
        except Exception as exc:
            log.warning("%d segment(s) not yet published (%s); the sweeper will", len(job_ids), exc)
            with self.runtime.session() as session:
                jobs.mark_unpublished(session, job_ids)

    def fail(self, item: Claimed, code: str, message: str, **details: object) -> None:
        item.done = True
        with self.runtime.session() as session:
            ok = jobs.fail(
                session,
                item.job_id,
                self.worker_id,
                item.attempt,
                code=code,
                message=message,
                **details,
            )
        if ok:
            self.runtime.notifier.jobs([item.job_id])
            metrics.job_finished("failed", code)
        else:
            log.warning("job %s: claim lost before recording failure %s", item.job_id, code)

    def claim(self, job_ids: list[str]) -> list[Claimed]:
        claimed: list[Claimed] = []
        for job_id in job_ids:
            with self.runtime.session() as session:
                c = jobs.claim(
                    session,
                    job_id,
                    self.worker_id,
                    max_attempts=self.settings.job_max_attempts,
                    lease_s=self.settings.lease_s,
                )
            batch_id = c.job.batch_id if c.job is not None else None
            with logs.bound(job_id=job_id, batch_id=batch_id):
                self._log_claim(c, job_id, claimed)
        return claimed

    def _log_claim(self, c: jobs.Claim, job_id: str, claimed: list[Claimed]) -> None:
        if c.outcome is jobs.ClaimOutcome.CLAIMED and c.job is not None:
            # Renewed from now on, so a lease far shorter than the task time limit
            # never runs out under a live worker.
            self.runtime.heartbeat.hold([job_id])
            log.info("job %s: attempt %d on %s", job_id, c.attempt, self.worker_id)
            claimed.append(
                Claimed(
                    job_id,
                    c.attempt,
                    c.job.audio_key,
                    c.job.batch_id,
                    recording_id=c.job.recording_id,
                    segment=c.job.segment,
                    model=(
                        (c.job.model_id, c.job.model_version)
                        if c.job.model_id and c.job.model_version
                        else None
                    ),
                )
            )
            return
        log.info("job %s: %s, nothing to do", job_id, c.outcome.value)
        if c.outcome is jobs.ClaimOutcome.GAVE_UP and c.job is not None:
            self.runtime.notifier.jobs([job_id])
            metrics.job_finished("failed", "worker_lost")
            claimed.append(
                Claimed(job_id, 0, "", c.job.batch_id, done=True, recording_id=c.job.recording_id)
            )

    def prepare(self, items: list[Claimed], sample_rate: int) -> list[Claimed]:
        ready = []
        # A chunk's audio in one read (one round trip on the database store).
        stored = self.runtime.storage.get_many(item.audio_key for item in items)
        for item in items:
            data = stored.get(item.audio_key)
            if data is None:
                self.fail(item, "audio_missing", "The uploaded recording is no longer stored.")
                continue
            try:
                audio = decode(data, sample_rate, max_seconds=self.settings.max_duration_s + 1)
                s = self.settings
                check_usable(audio, s.min_duration_s, s.max_duration_s, s.silence_dbfs)
            except AudioError as exc:
                self.fail(item, exc.code, exc.message)
                continue
            item.audio = audio
            ready.append(item)
        return ready

    def run(self, job_ids: list[str], coalesce: int = 0) -> None:
        """Analyse ``job_ids`` (a single job's delivery, or a batch chunk's). A single
        job's first attempt takes up to ``coalesce`` other queued single jobs with it
        (:meth:`coalesce`)."""
        held = list(job_ids)
        try:
            items = self.claim(job_ids)
            extra = self.coalesce(items, coalesce)
            held += [c.job_id for c in extra]
            self._run(items + extra)
        finally:
            self.runtime.heartbeat.release(held)

    def coalesce(self, items: list[Claimed], limit: int) -> list[Claimed]:
        """Other queued single jobs claimed to run in one chunk with ``items`` (a single
        job claimed for its first attempt; a retry runs alone, so that a recording that
        kills its worker takes no others with it)."""
        if limit <= 0 or len(items) != 1 or items[0].done or items[0].attempt != 1:
            return []
        with self.runtime.session() as session:
            more = jobs.claim_queued_singles(
                session,
                self.worker_id,
                limit,
                lease_s=self.settings.lease_s,
                exclude=items[0].job_id,
                models=self.served_pins(),
            )
        if more:
            self.runtime.heartbeat.hold([c.job_id for c in more])
            log.info(
                "job %s: %d more queued job(s) claimed with it: %s",
                items[0].job_id,
                len(more),
                [c.job_id for c in more],
            )
        return [Claimed(c.job_id, c.attempt, c.audio_key, None, model=c.model) for c in more]

    def served_pins(self) -> list[tuple[str, str]]:
        """The models this child has loaded; none while they cannot be loaded (then it
        coalesces only jobs pinned to no model)."""
        try:
            return list(self.runtime.load_models().by_pin)
        except Exception:
            return []

    def _run(self, items: list[Claimed]) -> None:
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
                        f"Analysis took longer than {self.settings.task_soft_time_limit_s} s and "
                        "was stopped.",
                    )
        except Exception as exc:
            if is_unavailable(exc):
                # Nothing can be recorded now, and the job is not at fault: the task
                # retries the delivery once the database answers (worker.tasks).
                raise
            log.exception("jobs %s: unexpected error", [i.job_id for i in active])
            for item in active:
                if not item.done:
                    self.fail(
                        item,
                        "internal_error",
                        f"An unexpected error stopped the analysis ({type(exc).__name__}).",
                    )
        # The parents whose last work this may have been: the same compare-and-set
        # completion for a batch and a long recording (shared.jobs.complete_parent).
        for batch_id in {i.batch_id for i in items if i.batch_id}:
            with self.runtime.session() as session:
                batches.complete_and_notify(
                    session, batch_id, self.publish_callback, self.runtime.notifier.batch
                )
        for recording_id in {i.recording_id for i in items if i.recording_id}:
            recording_work.complete(self.runtime, recording_id)

    def analyse(self, items: list[Claimed]) -> None:
        if self.settings.drill_task_delay_s:
            time.sleep(self.settings.drill_task_delay_s)
        long_work = [i for i in items if i.recording_id is not None]
        if long_work:
            recording_work.run(self, long_work)
        clips = [i for i in items if i.recording_id is None]
        if clips:
            self.analyse_clips(clips)

    def analyse_clips(self, items: list[Claimed]) -> None:
        try:
            models = self.runtime.load_models()
        except Exception as exc:
            for item in items:
                self.fail(
                    item,
                    "model_unavailable",
                    f"The analysis model could not be loaded on the worker: {exc}",
                )
            return
        # Each job on the model it is pinned to (a chunk is one batch's: one model; coalesced
        # single jobs may be pinned to several of this worker's models).
        groups: dict[int, tuple[Model, list[Claimed]]] = {}
        for item in items:
            model = models.for_pin(*(item.model or (None, None)))
            if model is None:
                assert item.model is not None
                self.fail(
                    item,
                    "model_not_served",
                    f"This worker does not serve the model {item.model[0]} {item.model[1]} "
                    "this job was submitted for; submit it again with a served model "
                    "(GET /api/v1/models).",
                )
                continue
            groups.setdefault(id(model), (model, []))[1].append(item)
        for model, group in groups.values():
            self.analyse_with(model, models.cough_gate, group)

    def analyse_with(self, model: Model, gate: Model | None, items: list[Claimed]) -> None:
        with metrics.stage("decode"):
            ready = self.prepare(items, model.sample_rate)
        decoded = list(ready)
        cough: dict[str, GateVerdict] = {i.job_id: GateVerdict() for i in ready}
        if gate is not None and ready:
            if gate.sample_rate != model.sample_rate:
                raise RuntimeError("the cough gate and the model need different sample rates")
            with metrics.stage("gate"):
                verdicts = gate.predict([i.audio.samples for i in ready])  # type: ignore[union-attr]
            passed = []
            for item, verdict in zip(ready, verdicts, strict=True):
                if not math.isfinite(verdict.score):
                    decoded.remove(item)
                    self.fail(item, *NOT_A_SCORE)
                    continue
                detected = verdict.diagnosis == gate.manifest.positive_label
                # Where the cough is; on a refusal, the window the gate liked best.
                looked_at = verdict.segments if detected else (verdict.peak,)
                segments = [list(s) for s in looked_at if s is not None] or None
                cough[item.job_id] = GateVerdict(
                    detected, verdict.score, segments, gate.manifest.threshold
                )
                if detected:
                    passed.append(item)
            ready = passed
        for item in decoded:
            verdict_of = cough[item.job_id]
            if verdict_of.detected is False:
                assert item.audio is not None
                self.fail(
                    item,
                    "no_cough_detected",
                    no_cough_message(item.audio.samples),
                    cough_detected=False,
                    cough_score=verdict_of.score,
                    cough_segments=verdict_of.segments,
                    cough_threshold=verdict_of.threshold,
                )
        if not ready:
            return
        with metrics.stage("model"):
            predictions = model.predict([i.audio.samples for i in ready])  # type: ignore[union-attr]
        with metrics.stage("write"):
            self.record(model, ready, predictions, cough)

    def record(
        self,
        model: Model,
        ready: list[Claimed],
        predictions: list[Prediction],
        cough: dict[str, GateVerdict],
    ) -> None:
        """Store each prediction on its job (one conditional update per job)."""
        for item, prediction in zip(ready, predictions, strict=True):
            if not math.isfinite(prediction.score):
                self.fail(item, *NOT_A_SCORE)
                continue
            gate_verdict = cough[item.job_id]
            features = baseline_features(item.audio)  # type: ignore[arg-type]
            item.done = True
            with self.runtime.session() as session:
                ok = jobs.succeed(
                    session,
                    item.job_id,
                    self.worker_id,
                    item.attempt,
                    diagnosis=prediction.diagnosis,
                    score=prediction.score,
                    threshold=model.manifest.threshold,
                    model_id=model.id,
                    model_version=model.version,
                    duration_s=item.audio.duration_s,  # type: ignore[union-attr]
                    cough_detected=gate_verdict.detected,
                    cough_score=gate_verdict.score,
                    cough_segments=gate_verdict.segments,
                    cough_threshold=gate_verdict.threshold,
                    active_share=features["active_share"],
                    loudness_db=features["loudness_db"],
                )
            if ok:
                self.runtime.notifier.jobs([item.job_id])
                metrics.job_finished("succeeded")
            else:
                log.warning(
                    "job %s: claim lost (deleted or taken over); result dropped", item.job_id
                )


def draw_spectrogram(rt: Runtime, job_id: str) -> bool:
    """Render and store a job's picture if it has none yet (``tussis.spectrogram``).

    Only people look at it (and Inception V3 bundles, which render their own input
    from the same code), so it is drawn when someone asks for it, off the analysis
    path. Idempotent: a second request finds it stored."""
    with rt.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.has_spectrogram or job.audio_deleted_at is not None:
            return False
        key, segments = job.audio_key, job.cough_segments
        pin = (job.model_id, job.model_version)
    # The picture of the model that scored it (an Inception bundle's is what it looked at),
    # where this worker serves that model; else its default's.
    models = rt.load_models()
    params = (models.for_pin(*pin) or models.diagnosis).manifest.spectrogram
    try:
        audio = decode(
            rt.storage.get(key), params.sample_rate, max_seconds=rt.settings.max_duration_s + 1
        )
    except (AudioNotFound, AudioError) as exc:
        log.info("job %s: no spectrogram (%s)", job_id, exc)
        return False
    rt.storage.put(spectrogram_key(key), picture(audio.samples, params, segments or ()))
    with rt.session() as session:
        jobs.mark_spectrogram(session, job_id)
    return True
