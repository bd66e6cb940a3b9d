"""Window scores -> events -> episodes (ml/events.py), and segments joined at
their edges giving the events of the whole recording."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml import events, yamnet
from ml.events import Event

SR = yamnet.SAMPLE_RATE


def test_runs_are_consecutive_true_values() -> None:
    assert events.runs(np.array([0, 1, 1, 0, 1, 0, 0, 1], dtype=bool)) == [(1, 2), (4, 4), (7, 7)]
    assert events.runs(np.zeros(4, dtype=bool)) == []
    assert events.runs(np.ones(3, dtype=bool)) == [(0, 2)]


def test_without_audio_an_event_spans_its_windows() -> None:
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.2, 0.7])
    found = events.detect(scores, 0.5)
    assert [(e.start_s, e.end_s, e.score) for e in found] == [
        (0.48, round(2 * 0.48 + 0.975, 3), 0.9),
        (round(5 * 0.48, 3), round(5 * 0.48 + 0.975, 3), 0.7),
    ]
    assert [(e.first_window, e.last_window) for e in found] == [(1, 2), (5, 5)]


def _burst_recording(
    seconds: float, bursts: list[tuple[float, float]], seed: int = 0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    samples = (rng.standard_normal(int(seconds * SR)) * 1e-4).astype(np.float32)
    for start, stop in bursts:
        a, b = int(start * SR), int(stop * SR)
        samples[a:b] += (rng.standard_normal(b - a) * 0.3).astype(np.float32)
    return samples


def test_the_onset_and_offset_are_refined_to_the_loud_part() -> None:
    samples = _burst_recording(6.0, [(2.13, 2.41)])
    n = events.window_count(len(samples))
    starts = np.arange(n) * events.HOP_S
    # Every window that touches the burst scores high, as a detector's would.
    scores = np.where((starts < 2.41) & (starts + events.WINDOW_S > 2.13), 0.9, 0.0)
    (event,) = events.detect(scores, 0.5, samples=samples)
    assert event.start_s == pytest.approx(2.13, abs=0.011)
    assert event.end_s == pytest.approx(2.41, abs=0.011)


def test_silence_keeps_the_window_span() -> None:
    (event,) = events.detect(np.array([0.9]), 0.5, samples=np.zeros(yamnet.WINDOW, np.float32))
    assert (event.start_s, event.end_s) == (0.0, 0.975)


def _segments(total: int, per: int) -> list[tuple[int, int]]:
    return [(k, min(k + per, total)) for k in range(0, total, per)]


@pytest.mark.parametrize("seed", range(5))
def test_segments_joined_at_their_edges_give_the_whole_recordings_events(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.random(1000) ** 3  # runs of every length, many across an edge
    whole = events.detect(scores, 0.4)
    parts = [events.detect(scores[a:b], 0.4, first_window=a) for a, b in _segments(1000, 125)]
    joined = events.join(parts)
    assert joined == whole
    assert [(e.first_window, e.last_window) for e in joined] == [
        (e.first_window, e.last_window) for e in whole
    ]
    # Parts arriving in any order (segments finish in any order) join the same way.
    assert events.join(reversed(parts)) == whole


def test_a_cough_cut_by_a_segment_edge_is_one_event_with_its_refined_bounds() -> None:
    per = 20  # windows per segment: the edge is at 20 * 0.48 = 9.6 s
    samples = _burst_recording(30.0, [(9.45, 9.85), (20.0, 20.3)], seed=3)
    n = events.window_count(len(samples))
    starts = np.arange(n) * events.HOP_S
    touches = [
        (starts < b) & (starts + events.WINDOW_S > a) for a, b in [(9.45, 9.85), (20.0, 20.3)]
    ]
    scores = np.where(touches[0] | touches[1], 0.9, 0.0)
    parts = []
    for a, b in _segments(n, per):
        lo, hi = events.window_span(a, b - 1)
        parts.append(events.detect(scores[a:b], 0.5, samples=samples[lo:hi], first_window=a))
    joined = events.join(parts)
    assert len(joined) == 2
    assert joined[0].start_s == pytest.approx(9.45, abs=0.011)
    assert joined[0].end_s == pytest.approx(9.85, abs=0.011)
    assert joined[1].start_s == pytest.approx(20.0, abs=0.011)
    whole = events.detect(scores, 0.5, samples=samples)
    got = [t for e in joined for t in (e.start_s, e.end_s)]
    assert got == pytest.approx([t for e in whole for t in (e.start_s, e.end_s)], abs=0.011)


def test_events_less_than_two_seconds_apart_are_one_episode() -> None:
    found = [
        Event(1.0, 1.4, 0.6),
        Event(3.3, 3.6, 0.9),  # 1.9 s after the first one's end: same episode
        Event(5.6, 5.9, 0.7),  # 2.0 s after: a new one
        Event(20.0, 20.5, 0.8),
    ]
    got = events.episodes(found)
    assert [(e.start_s, e.end_s, e.score) for e in got] == [
        (1.0, 3.6, 0.9),
        (5.6, 5.9, 0.7),
        (20.0, 20.5, 0.8),
    ]
    assert events.episodes([]) == []


def test_window_arithmetic_matches_yamnet_framing() -> None:
    for length in (
        100,
        yamnet.WINDOW,
        yamnet.WINDOW + yamnet.HOP - 1,
        yamnet.WINDOW + yamnet.HOP,
        10 * SR,
    ):
        assert events.window_count(length) == len(yamnet.frame(np.zeros(length))), length
    assert events.window_span(2, 4) == (2 * yamnet.HOP, 4 * yamnet.HOP + yamnet.WINDOW)


def test_a_detector_bundle_carries_its_own_counting_threshold() -> None:
    from ml.bundle import BundleError, Manifest
    from shared.config import PROJECT_ROOT

    gate = json.loads((PROJECT_ROOT / "models" / "cough-gate" / "manifest.json").read_text())
    assert Manifest.from_dict(gate).counting_threshold is not None  # the shipped one has one
    gate.pop("counting_threshold")  # as bundles written before counting existed
    old = Manifest.from_dict(gate)
    assert old.counting_threshold is None and old.event_threshold == old.threshold
    new = Manifest.from_dict({**gate, "counting_threshold": 0.8})
    assert new.event_threshold == 0.8
    assert Manifest.from_dict(new.to_dict()) == new
    with pytest.raises(BundleError):
        Manifest.from_dict({**gate, "counting_threshold": 1.5})
