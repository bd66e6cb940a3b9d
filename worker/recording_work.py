"""A long recording's work in a worker child: its one decoding pass, its segments,
and its completion. Called by ``worker.pipeline.Pipeline`` for job rows that belong
to a recording (``Job.recording_id``), after the pipeline claimed them exactly as it
claims clips; the pipeline records failures and completes the recording.

- The **decoding pass** finds the recording's 16 kHz mono PCM (the upload itself
  when it is such a WAV, else one transcode written as it decodes), then records
  its own success and the segment rows in one transaction, and queues the segments.
- A **segment** ``k`` reads the samples of windows ``[k*N, (k+1)*N)`` of that PCM
  (one ranged read: memory does not grow with the recording), scores each window
  with the cough detector (``model.window_scores``) and keeps its events
  (``ml.events.detect``) on its job row.
- **Completion** joins the segments' events at their edges (``ml.events.join``),
  groups episodes and bins the counts (``ml.rates``), and writes the result once
  (``shared.recordings.complete_if_done``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Protocol

from ml import events, rates
from ml.events import Event
from shared import jobs, plots, recordings
from shared.audio import AudioError
from shared.long_audio import PartsReader, Pcm, read_samples, too_long, transcode, wav_pcm
from shared.storage import AudioNotFound
from shared.tables import Job, JobStatus, Recording

log = logging.getLogger("tussis.worker")


class Item(Protocol):
    job_id: str
    attempt: int
    done: bool
    recording_id: str | None
    segment: int | None


class Worker(Protocol):
    """What this module needs of the pipeline that claimed the work."""

    runtime: Any
    settings: Any
    worker_id: str

    def fail(self, item: Any, code: str, message: str, **details: object) -> None: ...

    def publish_work(self, job_ids: list[str]) -> None: ...


def run(worker: Worker, items: Sequence[Item]) -> None:
    models = worker.runtime.load_models()
    detector = models.cough_gate
    for item in items:
        if item.done:
            continue
        if item.segment is None:
            decode_pass(worker, item)
        elif detector is None:
            worker.fail(
                item,
                "model_unavailable",
                "Counting coughs needs the cough detector, which this worker does not serve "
                "(TUSSIS_COUGH_GATE_BUNDLE is off).",
            )
        else:
            score_segment(worker, item, detector)


def _recording(worker: Worker, item: Item) -> Recording | None:
    with worker.runtime.session() as session:
        return session.get(Recording, item.recording_id)


def decode_pass(worker: Worker, item: Item) -> None:
    s = worker.settings
    store = worker.runtime.recording_storage
    recording = _recording(worker, item)
    if recording is None:
        return  # deleted meanwhile: its job row went with it, nothing to record
    with worker.runtime.session() as session:
        recordings.mark_running(session, recording.id)
    reader = PartsReader(store, recording.audio_parts)
    try:
        found = wav_pcm(reader)
        pcm_key: str | None = None
        if found is not None:
            # Already what segments read: its data chunk is used in place, no copy.
            offset, size = found
            pcm = Pcm(recording.audio_parts, offset, size // 2)
            if pcm.duration_s > s.max_recording_s:
                raise too_long(s.max_recording_s)
        else:
            pcm_key = recordings.pcm_key(recording.id)
            with store.open_write(pcm_key) as writer:
                samples = transcode(reader, writer, s.max_recording_s)
                writer.commit()
            pcm = Pcm([[pcm_key, 2 * samples]], 0, samples)
        if pcm.samples == 0:
            raise AudioError("empty_audio", "The file decodes to no audio samples at all.")
        if pcm.duration_s < s.min_duration_s:
            raise AudioError(
                "audio_too_short",
                f"The recording lasts {pcm.duration_s:.2f} s; at least {s.min_duration_s:g} s "
                "are needed.",
            )
    except AudioError as exc:
        worker.fail(item, exc.code, exc.message)
        return
    except AudioNotFound:
        worker.fail(item, "audio_missing", "The uploaded recording is no longer stored.")
        return
    windows = events.window_count(pcm.samples)
    item.done = True
    with worker.runtime.session() as session:
        ok = jobs.succeed_work(
            session, item.job_id, worker.worker_id, item.attempt, duration_s=pcm.duration_s
        )
        # The segments exist exactly when the pass's success is recorded (one transaction).
        segment_ids = (
            recordings.add_segments(
                session,
                recording,
                pcm_key=pcm_key,
                pcm_offset=pcm.offset,
                samples=pcm.samples,
                windows=windows,
                windows_per_segment=s.segment_windows,
            )
            if ok
            else []
        )
    if not ok:
        log.warning("recording %s: decoding pass lost its claim; dropped", recording.id)
        return
    log.info(
        "recording %s: %.0f s of audio, %d windows in %d segments",
        recording.id,
        pcm.duration_s,
        windows,
        len(segment_ids),
    )
    worker.publish_work(segment_ids)


def segment_span(samples: int, segment: int, per: int) -> tuple[int, int, int]:
    """(first window, last window, window count of the recording) of segment ``segment``."""
    total = events.window_count(samples)
    first = segment * per
    last = min(total, first + per) - 1
    return first, last, total


def score_segment(worker: Worker, item: Item, detector: Any) -> None:
    recording = _recording(worker, item)
    if recording is None or recording.pcm_offset is None or recording.samples is None:
        return
    assert item.segment is not None
    pcm = Pcm(recordings.pcm_parts(recording), recording.pcm_offset, int(recording.samples))
    first, last, _ = segment_span(pcm.samples, item.segment, worker.settings.segment_windows)
    start, stop = events.window_span(first, last)
    try:
        samples = read_samples(worker.runtime.recording_storage, pcm, start, stop - start)
    except AudioNotFound:
        worker.fail(item, "audio_missing", "The recording's audio is no longer stored.")
        return
    scores = detector.window_scores(samples)
    if len(scores) != last - first + 1:
        raise RuntimeError(
            f"segment {item.segment}: {len(scores)} window scores for windows {first}..{last}"
        )
    if not all(math.isfinite(float(x)) for x in scores):
        worker.fail(
            item,
            "undecodable_audio",
            "The detector could not score part of this recording (its samples gave no valid "
            "number).",
        )
        return
    threshold = detector.manifest.event_threshold
    found = events.detect(scores, threshold, samples=samples, first_window=first)
    item.done = True
    with worker.runtime.session() as session:
        ok = jobs.succeed_work(
            session,
            item.job_id,
            worker.worker_id,
            item.attempt,
            diagnosis=f"{len(found)} events",
            score=float(scores.max()),
            threshold=threshold,
            model_id=detector.id,
            model_version=detector.version,
            duration_s=len(samples) / events.SAMPLE_RATE,
            cough_segments=[
                [e.start_s, e.end_s, e.score, e.first_window, e.last_window] for e in found
            ],
        )
    if not ok:
        log.warning("recording segment %s: claim lost; result dropped", item.job_id)


def summarise(recording: Recording, rows: list[Job]) -> recordings.Outcome:
    """The result of a recording whose work rows are all terminal."""
    passes = [r for r in rows if r.segment is None]
    if not passes or passes[0].status != JobStatus.SUCCEEDED:
        failed = passes[0] if passes else None
        return recordings.Outcome(
            error_code=(failed.error_code if failed else None) or "internal_error",
            error_message=(failed.error_message if failed else None)
            or "The recording could not be decoded.",
        )
    segments = [r for r in rows if r.segment is not None]
    for row in segments:
        if row.status != JobStatus.SUCCEEDED:
            return recordings.Outcome(
                error_code=row.error_code or "internal_error",
                error_message=(
                    f"Segment {(row.segment or 0) + 1} of {len(segments)} could not be "
                    f"counted: {row.error_message}"
                ),
            )
    parts = [
        [
            Event(a, b, s, first_window=int(f), last_window=int(last))
            for a, b, s, f, last in (row.cough_segments or [])
        ]
        for row in segments
    ]
    joined = events.join(parts)
    grouped = events.episodes(joined)
    detector = {
        "name": segments[0].model_id if segments else None,
        "version": segments[0].model_version if segments else None,
        "threshold": segments[0].threshold if segments else None,
    }
    result = rates.summary(
        joined, grouped, recording.duration_s or 0.0, recording.recorded_at, detector
    )
    return recordings.Outcome(result=result, events=[(e.start_s, e.end_s, e.score) for e in joined])


def complete(runtime: Any, recording_id: str) -> bool:
    """Finish the recording if its work is done; the caller whose compare-and-set lands
    also draws its timeline into the recording store before the result is committed
    (a failure rolls both back, and the sweeper's next completion tries again)."""
    with runtime.session() as session:
        done = recordings.complete_if_done(session, recording_id, summarise)
        if not done:
            return False
        row = session.get(Recording, recording_id)
        if row is not None and row.status == JobStatus.SUCCEEDED:
            result = dict(row.result or {})
            png = plots.timeline_png(
                result.get("ten_minutes", []),
                result.get("hourly", []),
                title=row.label or row.filename or row.id,
            )
            runtime.recording_storage.put(recordings.timeline_key(recording_id), png)
    log.info("recording %s: finished", recording_id)
    return True
