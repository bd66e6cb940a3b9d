"""Cough events over time, from the detector's per-window scores.

One definition serves the cough gate (where in a clip the cough is), counting over
long recordings (one segment at a time, joined at the segment edges) and the
evaluation of both:

- an **event** is a run of consecutive YAMNet windows (0.975 s, every 0.48 s)
  whose score is at or above a threshold; its onset and offset are refined to
  the loud part of the run (10 ms frames within ``ENERGY_DB`` of the run's
  loudest frame), so an event spans the cough, not the whole window;
- an **episode** (bout) is events less than ``EPISODE_GAP_S`` apart, measured
  from one event's end to the next one's start (docs/model-card.md#counting);
- a long recording is scored in segments of whole windows: segment ``k`` scores
  windows ``[k*N, (k+1)*N)``, so every window of the recording is scored exactly
  once and the segments' windows are the recording's own. An event cut by a
  segment edge ends on the segment's last window and continues on the next
  segment's first: ``join`` makes it one event again. Only the onset and offset
  refinement sees each part's audio alone, so a joined event starts where its
  first part's loud frames start and ends where its last part's end.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ml import yamnet

SAMPLE_RATE = yamnet.SAMPLE_RATE
WINDOW_S = yamnet.WINDOW / yamnet.SAMPLE_RATE  # 0.975 s
HOP_S = yamnet.HOP / yamnet.SAMPLE_RATE  # 0.48 s
EPISODE_GAP_S = 2.0  # coughs less than this apart are one episode
FRAME_S = 0.01  # energy frames for the onset and offset
ENERGY_DB = 20.0  # a frame this far below the run's loudest is not part of the cough
_SILENT_DB = -100.0


@dataclass(frozen=True)
class Event:
    """A detected cough: seconds from the start of the recording, and the highest
    window score within it. ``first_window``/``last_window`` are the run's window
    indices in the whole recording (how segments are joined), not part of the
    event's identity."""

    start_s: float
    end_s: float
    score: float
    first_window: int = field(default=0, compare=False)
    last_window: int = field(default=0, compare=False)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def window_count(samples: int) -> int:
    """YAMNet windows over ``samples`` samples at 16 kHz (``ml.yamnet.frame``)."""
    return 1 + max(0, samples - yamnet.WINDOW) // yamnet.HOP


def window_span(first: int, last: int) -> tuple[int, int]:
    """The samples ``[start, stop)`` that windows ``first..last`` (inclusive) cover."""
    return first * yamnet.HOP, last * yamnet.HOP + yamnet.WINDOW


def runs(above: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` index of each run of consecutive True values."""
    flags = np.concatenate([[False], np.asarray(above, dtype=bool), [False]])
    edges = np.flatnonzero(np.diff(flags.astype(np.int8)))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def frame_db(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Energy in dB of each whole 10 ms frame of ``samples`` (a partial last frame is
    left out): what onsets and offsets are refined on."""
    part = np.asarray(samples, dtype=np.float64)
    hop = max(1, round(FRAME_S * sample_rate))
    frames = len(part) // hop
    energy = np.mean(part[: frames * hop].reshape(frames, hop) ** 2, axis=1)
    return np.asarray(10 * np.log10(energy + 1e-20))


def _loud_frames(db: np.ndarray) -> tuple[int, int] | None:
    """First and one past the last frame within ``ENERGY_DB`` of the loudest; None
    for silence."""
    if len(db) == 0 or float(db.max()) <= _SILENT_DB:
        return None
    loud = np.flatnonzero(db >= float(db.max()) - ENERGY_DB)
    return int(loud[0]), int(loud[-1]) + 1


def refine(
    samples: np.ndarray, start: int, stop: int, sample_rate: int = SAMPLE_RATE
) -> tuple[int, int]:
    """The loud part of ``samples[start:stop]``: from the first to the end of the
    last 10 ms frame within ``ENERGY_DB`` of the loudest frame. Silence keeps the span."""
    part = np.asarray(samples[start:stop])
    hop = max(1, round(FRAME_S * sample_rate))
    span = _loud_frames(frame_db(part, sample_rate))
    if span is None:
        return start, stop
    return start + span[0] * hop, start + min(len(part), span[1] * hop)


def _refine_frames(energies_db: np.ndarray, start: int, stop: int) -> tuple[int, int]:
    """:func:`refine` from :func:`frame_db` of the whole audio instead of its samples:
    ``start`` is a multiple of the frame (every window starts on one), so the frames
    of ``samples[start:stop]`` are the audio's frames from ``start // hop``."""
    hop = round(FRAME_S * SAMPLE_RATE)
    first = start // hop
    frames = max(0, min((stop - start) // hop, len(energies_db) - first))
    span = _loud_frames(energies_db[first : first + frames])
    if span is None:
        return start, stop
    return start + span[0] * hop, start + span[1] * hop


def detect(
    scores: np.ndarray,
    threshold: float,
    samples: np.ndarray | None = None,
    first_window: int = 0,
    sample_rate: int = SAMPLE_RATE,
    energies_db: np.ndarray | None = None,
) -> list[Event]:
    """Events among consecutive windows' ``scores``, the first of which is window
    ``first_window`` of the recording. ``samples``, when given, are 16 kHz audio
    starting at that window's start (a segment's own audio): onsets and offsets
    are then refined by energy; without it an event spans its windows.
    ``energies_db``, :func:`frame_db` of that same audio, refines them the same way
    without the samples (a long recording's frames take 1/160 of its samples)."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"events are detected on {SAMPLE_RATE} Hz audio, not {sample_rate}")
    scores = np.asarray(scores, dtype=np.float64)
    base = first_window * yamnet.HOP
    events = []
    for first, last in runs(scores >= threshold):
        start, stop = window_span(first, last)
        if samples is not None:
            start, stop = refine(samples, start, min(stop, len(samples)))
        elif energies_db is not None:
            start, stop = _refine_frames(energies_db, start, stop)
        events.append(
            Event(
                start_s=round((base + start) / SAMPLE_RATE, 3),
                end_s=round((base + stop) / SAMPLE_RATE, 3),
                score=round(float(scores[first : last + 1].max()), 4),
                first_window=first_window + first,
                last_window=first_window + last,
            )
        )
    return events


def join(parts: Iterable[Sequence[Event]]) -> list[Event]:
    """Events of consecutive segments, in order, as one list: an event whose first
    window directly follows the previous event's last window is the same run of
    windows cut by a segment edge, and becomes one event."""
    joined: list[Event] = []
    for event in sorted((e for part in parts for e in part), key=lambda e: e.first_window):
        previous = joined[-1] if joined else None
        if previous is not None and event.first_window <= previous.last_window + 1:
            joined[-1] = replace(
                previous,
                start_s=min(previous.start_s, event.start_s),
                end_s=max(previous.end_s, event.end_s),
                score=max(previous.score, event.score),
                last_window=max(previous.last_window, event.last_window),
            )
        else:
            joined.append(event)
    return joined


def episodes(events: Sequence[Event], gap_s: float = EPISODE_GAP_S) -> list[Event]:
    """Events less than ``gap_s`` apart (one's end to the next one's start) merged
    into episodes; each episode's score is its best event's."""
    out: list[Event] = []
    for event in sorted(events, key=lambda e: e.start_s):
        if out and round(event.start_s - out[-1].end_s, 3) < gap_s:
            last = out[-1]
            out[-1] = replace(
                last,
                end_s=max(last.end_s, event.end_s),
                score=max(last.score, event.score),
                last_window=max(last.last_window, event.last_window),
            )
        else:
            out.append(event)
    return out
