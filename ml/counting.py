"""Counting coughs over long recordings, and measuring it against an annotation.

A long recording is scored a segment at a time (``SEGMENT_WINDOWS`` whole YAMNet
windows each, as ``ml.events`` describes), so memory never grows with its length:
what is kept per recording is one score per window (0.48 s) and one energy per
10 ms frame, from which ``ml.events`` makes events and episodes at any threshold.

Scoring follows the practice of cough-monitor validation (``shared/docs`` and
docs/model-card.md#counting):

- the annotation is a list of cough events (``start_s,end_s``); annotated events
  less than ``ml.events.EPISODE_GAP_S`` apart form one annotated episode, exactly
  as detected events form detected episodes;
- an annotated episode is **found** when a detected episode overlaps it, each
  widened by ``TOLERANCE_S`` on both sides; a detected episode overlapping no
  annotated one is a **false positive**;
- **episode sensitivity** = found / annotated episodes; **false positives per
  hour** = false positives / hours of audio; **precision** = detected episodes
  that overlap an annotated one / detected episodes; the same at event level;
- **hourly rates**: each recording is cut into whole hours from its start (a last
  part shorter than ``MIN_BIN_H`` is dropped) and, per part, annotated and
  detected episodes per hour (by their start) are compared: Pearson's r over all
  parts of all recordings.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ml import events, rates, yamnet
from ml.events import Event
from tussis.formats import AUDIO_SUFFIXES

TOLERANCE_S = 0.25
SEGMENT_WINDOWS = 125  # 60 s of windows (125 x 0.48 s) per scoring call
MIN_BIN_H = 0.25  # an hour bin shorter than this (a recording's tail) is left out
BIN_H = 1.0


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float


def read_annotation(path: Path) -> list[Span]:
    """``start_s,end_s`` rows (a header row is allowed), in seconds from the start."""
    spans = []
    with open(path, newline="") as fh:
        for row in csv.reader(fh):
            if not row or row[0].strip().lower() in ("start_s", "start"):
                continue
            start, end = float(row[0]), float(row[1])
            if not 0 <= start <= end:
                raise ValueError(f"{path}: a cough must start before it ends: {row}")
            spans.append(Span(start, end))
    return sorted(spans, key=lambda s: s.start_s)


def write_annotation(path: Path, spans: Sequence[Span]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["start_s", "end_s"])
    for span in spans:
        writer.writerow([f"{span.start_s:.3f}", f"{span.end_s:.3f}"])
    Path(path).write_text(buf.getvalue())


def episodes_of(spans: Sequence[Span]) -> list[Span]:
    """Annotated events as episodes, by the rule ``ml.events.episodes`` applies."""
    merged = events.episodes([Event(s.start_s, s.end_s, 1.0) for s in spans])
    return [Span(e.start_s, e.end_s) for e in merged]


def overlaps(a: Sequence[Span], b: Sequence[Span], tolerance_s: float = TOLERANCE_S) -> np.ndarray:
    """``(len(a), len(b))``: whether each pair overlaps once both are widened by
    ``tolerance_s`` on each side."""
    if not a or not b:
        return np.zeros((len(a), len(b)), dtype=bool)
    a0 = np.array([s.start_s for s in a])[:, None] - tolerance_s
    a1 = np.array([s.end_s for s in a])[:, None] + tolerance_s
    b0 = np.array([s.start_s for s in b])[None, :] - tolerance_s
    b1 = np.array([s.end_s for s in b])[None, :] + tolerance_s
    return np.asarray((a0 < b1) & (b0 < a1))


@dataclass(frozen=True)
class Match:
    annotated: int
    found: int
    detected: int
    true_detections: int  # detections that overlap an annotated one

    @property
    def false_positives(self) -> int:
        return self.detected - self.true_detections


def match(annotated: Sequence[Span], detected: Sequence[Span]) -> Match:
    hits = overlaps(annotated, detected)
    return Match(
        annotated=len(annotated),
        found=int(hits.any(axis=1).sum()) if len(annotated) else 0,
        detected=len(detected),
        true_detections=int(hits.any(axis=0).sum()) if len(detected) else 0,
    )


@dataclass(frozen=True)
class Recording:
    """What counting needs of one long recording: its window scores and frame
    energies (``ml.events.frame_db``), its length and its annotation."""

    name: str
    scores: np.ndarray
    energies_db: np.ndarray
    duration_s: float
    annotation: tuple[Span, ...]


def detect(recording: Recording, threshold: float) -> list[Event]:
    """The recording's detected events (joined over its segments: one run of
    windows is one event, ``ml.events.join``)."""
    return events.detect(recording.scores, threshold, energies_db=recording.energies_db)


def hourly(spans: Sequence[Span], duration_s: float) -> list[float]:
    """Episodes per hour in each whole hour from the start (``ml.rates.bins``, the
    service's own binning); the last, shorter part counts when at least ``MIN_BIN_H``
    long."""
    rows = rates.bins([Event(s.start_s, s.end_s, 1.0) for s in spans], duration_s, BIN_H * 3600)
    return [
        r["count"] / (r["covered_s"] / 3600) for r in rows if r["covered_s"] >= MIN_BIN_H * 3600
    ]


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def score(recordings: Sequence[Recording], threshold: float) -> dict[str, Any]:
    """Episode and event sensitivity, false positives per hour and precision over all
    recordings at ``threshold``, the hourly rates and their correlation."""
    hours = sum(r.duration_s for r in recordings) / 3600
    by_episode = [0, 0, 0, 0]
    by_event = [0, 0, 0, 0]
    rates_annotated: list[float] = []
    rates_detected: list[float] = []
    per_recording = {}
    for rec in recordings:
        found = detect(rec, threshold)
        detected_events = [Span(e.start_s, e.end_s) for e in found]
        detected_episodes = [Span(e.start_s, e.end_s) for e in events.episodes(found)]
        annotated_episodes = episodes_of(rec.annotation)
        m = match(annotated_episodes, detected_episodes)
        e = match(list(rec.annotation), detected_events)
        for acc, x in ((by_episode, m), (by_event, e)):
            acc[0] += x.annotated
            acc[1] += x.found
            acc[2] += x.detected
            acc[3] += x.true_detections
        a_rates = hourly(annotated_episodes, rec.duration_s)
        d_rates = hourly(detected_episodes, rec.duration_s)
        rates_annotated += a_rates
        rates_detected += d_rates
        per_recording[rec.name] = {
            "hours": round(rec.duration_s / 3600, 4),
            "annotated_episodes": m.annotated,
            "found": m.found,
            "detected_episodes": m.detected,
            "false_positives": m.false_positives,
        }

    def figures(acc: list[int]) -> dict[str, Any]:
        annotated, found, detected, true = acc
        return {
            "annotated": annotated,
            "found": found,
            "detected": detected,
            "false_positives": detected - true,
            "sensitivity": _ratio(found, annotated),
            "false_positives_per_hour": _ratio(detected - true, hours),
            "precision": _ratio(true, detected),
        }

    r: float | None = None
    if len(rates_annotated) >= 3 and np.std(rates_annotated) > 0 and np.std(rates_detected) > 0:
        r = round(float(np.corrcoef(rates_annotated, rates_detected)[0, 1]), 4)
    return {
        "threshold": round(float(threshold), 6),
        "hours": round(hours, 4),
        "recordings": len(recordings),
        "episodes": figures(by_episode),
        "events": figures(by_event),
        "hourly": {
            "annotated": [round(x, 3) for x in rates_annotated],
            "detected": [round(x, 3) for x in rates_detected],
            "pearson_r": r,
        },
        "per_recording": per_recording,
    }


def choose_threshold(
    recordings: Sequence[Recording], max_fp_per_hour: float, grid: Sequence[float]
) -> tuple[float, list[dict[str, Any]]]:
    """The threshold of ``grid`` with the highest episode sensitivity whose false
    positives per hour stay at or below ``max_fp_per_hour`` (the higher threshold on
    a tie); the sweep as measured. With none within the bound, the one with the
    fewest false positives per hour."""
    sweep = [score(recordings, t) for t in sorted(grid)]

    def key(s: dict[str, Any]) -> tuple[float, float]:
        return (s["episodes"]["sensitivity"] or 0.0, s["threshold"])

    within = [
        s for s in sweep if (s["episodes"]["false_positives_per_hour"] or 0) <= max_fp_per_hour
    ]
    best = (
        max(within, key=key)
        if within
        else min(sweep, key=lambda s: (s["episodes"]["false_positives_per_hour"], -s["threshold"]))
    )
    brief = [
        {
            "threshold": s["threshold"],
            "episode_sensitivity": s["episodes"]["sensitivity"],
            "false_positives_per_hour": s["episodes"]["false_positives_per_hour"],
        }
        for s in sweep
    ]
    return float(best["threshold"]), brief


# --- reading long recordings a segment at a time ---------------------------------


def stream_samples(fh: BinaryIO, block_s: float = 30.0) -> Iterator[np.ndarray]:
    """A recording's 16 kHz mono float32 samples, block after block (PyAV decodes
    and resamples as it reads; any format ``shared.audio.decode`` reads)."""
    import av

    container = av.open(fh, mode="r", metadata_errors="ignore")
    with container:
        stream = next(iter(container.streams.audio), None)
        if stream is None:
            raise ValueError("the file contains no audio track")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=yamnet.SAMPLE_RATE)
        pending: list[np.ndarray] = []
        size = 0
        block = int(block_s * yamnet.SAMPLE_RATE)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                pending.append(chunk)
                size += len(chunk)
            if size >= block:
                yield np.concatenate(pending)
                pending, size = [], 0
        for out in resampler.resample(None):
            pending.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        if pending:
            yield np.concatenate(pending)


def segments(
    blocks: Iterator[np.ndarray], windows_per_segment: int = SEGMENT_WINDOWS
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_window, samples)`` for consecutive segments of whole windows: the
    samples are exactly those of windows ``first_window .. first_window + n - 1``
    (``ml.events.window_span``), so each window is scored once and the segments'
    windows are the recording's own. Samples after the last whole window are not
    scored (nor are they by the service)."""
    hop, window = yamnet.HOP, yamnet.WINDOW
    step = windows_per_segment * hop  # samples from one segment's start to the next
    buffer = np.zeros(0, np.float32)
    first = 0
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        while len(buffer) >= step - hop + window:
            yield first, buffer[: step - hop + window]
            buffer = buffer[step:]
            first += windows_per_segment
    if len(buffer) >= window:
        n = events.window_count(len(buffer))
        yield first, buffer[: (n - 1) * hop + window]


def analyse(
    path: Path,
    window_scores: Callable[[np.ndarray], np.ndarray],
    windows_per_segment: int = SEGMENT_WINDOWS,
) -> tuple[np.ndarray, np.ndarray, float]:
    """A long recording's window scores, frame energies and duration, read and
    scored a segment at a time."""
    hop = round(events.FRAME_S * yamnet.SAMPLE_RATE)
    scores: list[np.ndarray] = []
    energies: list[np.ndarray] = []
    total = 0
    pending = np.zeros(0, np.float32)

    def counted(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        nonlocal total, pending
        for block in blocks:
            total += len(block)
            joined = np.concatenate([pending, block])
            whole = len(joined) // hop * hop  # frames never straddle two blocks
            energies.append(events.frame_db(joined[:whole]))
            pending = joined[whole:]
            yield block

    with open(path, "rb") as fh:
        for _, samples in segments(counted(stream_samples(fh)), windows_per_segment):
            part = np.asarray(window_scores(samples), dtype=np.float32)
            expected = events.window_count(len(samples))
            if len(part) != expected:
                raise ValueError(f"the detector gave {len(part)} scores for {expected} windows")
            scores.append(part)
    return (
        np.concatenate(scores) if scores else np.zeros(0, np.float32),
        np.concatenate(energies) if energies else np.zeros(0),
        total / yamnet.SAMPLE_RATE,
    )


# --- a folder of long recordings, scored by a detector bundle ----------------------

# Counting thresholds tried when one is chosen; the detector's window scores crowd
# near 1 for coughs, so the grid is finer there.
THRESHOLD_GRID = tuple(
    sorted({round(x, 3) for x in [*np.arange(0.05, 0.951, 0.05), *np.arange(0.96, 0.991, 0.01)]}
           | {0.995, 0.999})
)  # fmt: skip
MAX_FP_PER_HOUR = 1.5  # the counting threshold is chosen at or below this on validation


def long_recordings(data: Path) -> list[tuple[Path, Path]]:
    """Each audio file in ``data`` with its annotation ``<stem>.csv``."""
    pairs = []
    for path in sorted(Path(data).iterdir()):
        if path.is_file() and path.suffix.lower() in AUDIO_SUFFIXES:
            annotation = path.with_suffix(".csv")
            if not annotation.is_file():
                raise ValueError(f"{path.name} has no annotation {annotation.name} beside it")
            pairs.append((path, annotation))
    if not pairs:
        raise ValueError(f"no long recordings (audio files with a .csv beside them) in {data}")
    return pairs


def _digest(path: Path) -> str:
    from ml.yamnet import sha256_of

    return sha256_of(path)


def model_digest(bundle: Path) -> str:
    """What a detector bundle's window scores depend on: its backbone, preprocessing
    and weights (not its thresholds or card, which choosing a threshold rewrites)."""
    import hashlib
    import json

    from ml.bundle import read_manifest

    manifest = read_manifest(bundle)
    digest = hashlib.sha256()
    digest.update(json.dumps(manifest.backbone, sort_keys=True).encode())
    digest.update(json.dumps(manifest.preprocess.to_dict(), sort_keys=True).encode())
    digest.update((Path(bundle) / manifest.head).read_bytes())
    return digest.hexdigest()


def read_set(
    data: Path,
    window_scores: Callable[[np.ndarray], np.ndarray],
    cache_key: str,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> list[Recording]:
    """Every long recording of ``data`` scored (or read from ``cache_dir``, keyed by
    the file's digest, ``cache_key`` and the segment length)."""
    from tqdm import tqdm

    out = []
    for audio, annotation in tqdm(
        long_recordings(data), desc="long recordings", unit="file", disable=not progress
    ):
        key = None
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            key = Path(cache_dir) / f"{_digest(audio)[:24]}-{cache_key[:16]}-{SEGMENT_WINDOWS}.npz"
        if key is not None and key.is_file():
            with np.load(key) as z:
                scores, energies, duration = z["scores"], z["energies"], float(z["duration"])
        else:
            scores, energies, duration = analyse(audio, window_scores)
            if key is not None:
                np.savez(key, scores=scores, energies=energies, duration=duration)
        out.append(
            Recording(audio.stem, scores, energies, duration, tuple(read_annotation(annotation)))
        )
    return out


def evaluate_counting(
    data: Path,
    gate: Path,
    yamnet_model: Path,
    yamnet_url: str | None = None,
    threshold: float | None = None,
    out: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Count coughs in every long recording of ``data`` with the detector bundle
    ``gate`` (at its counting threshold unless ``threshold`` is given) and measure
    the counts against the annotations; with ``out``, write ``report.json`` and
    ``count-agreement.png`` there."""
    import json

    from ml.model import load_model
    from shared.plots import count_agreement_png

    model = load_model(gate, yamnet_model=yamnet_model, yamnet_url=yamnet_url)
    if not model.window_pooled:
        raise ValueError(f"{gate} is not a detector: it does not score windows")
    recordings = read_set(data, model.window_scores, model_digest(gate), cache_dir, progress)
    chosen = model.manifest.event_threshold if threshold is None else threshold
    report = score(recordings, chosen)
    report["detector"] = {"name": model.id, "version": model.version}
    _, report["sweep"] = choose_threshold(recordings, MAX_FP_PER_HOUR, THRESHOLD_GRID)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "count-agreement.png").write_bytes(
            count_agreement_png(report["hourly"]["annotated"], report["hourly"]["detected"])
        )
        report["outputs"] = str(out)
    return report


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['recordings']} long recordings, {report['hours']:.2f} h; "
        f"threshold {report['threshold']:g}"
    ]
    for level in ("episodes", "events"):
        f = report[level]
        lines.append(
            f"  {level:<8} sensitivity {f['sensitivity']} ({f['found']}/{f['annotated']}), "
            f"false positives {f['false_positives']} = {f['false_positives_per_hour']}/h, "
            f"precision {f['precision']} ({f['detected']} detected)"
        )
    lines.append(f"  hourly rates: Pearson r = {report['hourly']['pearson_r']}")
    if "sweep" in report:
        lines.append("  threshold  episode sensitivity  false positives/h")
        for s in report["sweep"]:
            lines.append(
                f"  {s['threshold']:>9g}  {s['episode_sensitivity']!s:>19}  "
                f"{s['false_positives_per_hour']!s:>17}"
            )
    return "\n".join(lines)
