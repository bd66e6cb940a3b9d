"""Counting over long recordings (ml/counting.py): matching detected episodes to
an annotation, the figures cough-monitor validation reports, and a recording read
and scored a segment at a time giving what the whole recording gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml import counting, events, yamnet
from ml.counting import Recording, Span
from ml.negatives import write_wav

SR = yamnet.SAMPLE_RATE


def test_annotations_round_trip_and_bad_rows_are_refused(tmp_path: Path) -> None:
    spans = [Span(1.25, 1.5), Span(0.0, 0.4)]
    counting.write_annotation(tmp_path / "a.csv", spans)
    assert (tmp_path / "a.csv").read_text().splitlines()[0] == "start_s,end_s"
    assert counting.read_annotation(tmp_path / "a.csv") == sorted(spans, key=lambda s: s.start_s)
    (tmp_path / "bad.csv").write_text("start_s,end_s\n2.0,1.0\n")
    with pytest.raises(ValueError, match="start before it ends"):
        counting.read_annotation(tmp_path / "bad.csv")


def test_annotated_events_form_episodes_by_the_two_second_rule() -> None:
    spans = [Span(10.0, 10.3), Span(11.0, 11.4), Span(13.5, 13.8), Span(30.0, 30.2)]
    assert counting.episodes_of(spans) == [Span(10.0, 11.4), Span(13.5, 13.8), Span(30.0, 30.2)]


def test_matching_counts_found_episodes_and_false_positives() -> None:
    annotated = [Span(10.0, 10.5), Span(20.0, 20.5), Span(30.0, 30.5)]
    detected = [
        Span(10.6, 11.0),  # 0.1 s after the first: within the tolerance
        Span(19.0, 25.0),  # covers the second
        Span(40.0, 40.5),  # nothing there
        Span(30.9, 31.0),  # 0.4 s after the third: both widened by 0.25 s, they meet
    ]
    m = counting.match(annotated, detected)
    assert (m.annotated, m.found, m.detected, m.true_detections) == (3, 3, 4, 3)
    assert m.false_positives == 1
    far = counting.match(annotated, [Span(31.01, 31.2)])  # 0.51 s away: beyond 2 x 0.25 s
    assert (far.found, far.false_positives) == (0, 1)
    assert counting.match([], []) == counting.Match(0, 0, 0, 0)


def test_hourly_rates_count_episodes_by_their_start_in_whole_hours() -> None:
    spans = [Span(10.0, 11.0), Span(3599.5, 3600.5), Span(3700.0, 3701.0)]
    # 1.5 h: a whole hour, then half an hour (kept: at least MIN_BIN_H)
    assert counting.hourly(spans, 5400.0) == [2.0, 2.0]
    # 1.1 h: the last 0.1 h is too short to give a rate
    assert counting.hourly(spans, 3960.0) == [2.0]


def _recording(name: str, scores: list[float], annotation: list[Span]) -> Recording:
    n = len(scores)
    samples = (n - 1) * yamnet.HOP + yamnet.WINDOW
    return Recording(
        name,
        np.asarray(scores),
        np.zeros(0),  # no energies: events span their windows
        samples / SR,
        tuple(annotation),
    )


def test_score_reports_sensitivity_false_positives_per_hour_and_precision() -> None:
    # Window k spans [0.48 k, 0.48 k + 0.975): a cough in window 10 and one in 100.
    scores = np.zeros(7500)  # one hour of windows
    scores[[10, 100, 4000]] = 0.9
    annotation = [Span(4.9, 5.2), Span(48.2, 48.5), Span(2000.0, 2000.3)]
    report = counting.score([_recording("r", scores.tolist(), annotation)], 0.5)
    episodes = report["episodes"]
    assert (episodes["annotated"], episodes["found"], episodes["detected"]) == (3, 2, 3)
    assert episodes["sensitivity"] == pytest.approx(2 / 3, abs=1e-4)
    assert episodes["false_positives"] == 1
    assert episodes["false_positives_per_hour"] == pytest.approx(1 / report["hours"], abs=1e-3)
    assert episodes["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["per_recording"]["r"]["false_positives"] == 1


def test_the_counting_threshold_is_the_most_sensitive_within_the_false_positive_bound() -> None:
    scores = np.zeros(7500)
    scores[[10, 100]] = [0.9, 0.4]  # two coughs, one faint
    scores[[3000, 5000]] = [0.5, 0.3]  # two other sounds
    annotation = [Span(4.9, 5.2), Span(48.2, 48.5)]
    recs = [_recording("r", scores.tolist(), annotation)]
    threshold, sweep = counting.choose_threshold(recs, 1.0, (0.2, 0.35, 0.45, 0.6))
    # 0.35 finds both coughs with one false positive an hour; 0.2 would give two.
    assert threshold == 0.35
    assert [s["episode_sensitivity"] for s in sweep] == [1.0, 1.0, 0.5, 0.5]
    # With no threshold within the bound, the one with the fewest false positives.
    assert counting.choose_threshold(recs, 0.0, (0.2, 0.35))[0] == 0.35


def _bursts(seconds: float, at: list[float], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(int(seconds * SR)) * 1e-3).astype(np.float32)
    for t in at:
        a = int(t * SR)
        x[a : a + int(0.3 * SR)] += (rng.standard_normal(int(0.3 * SR)) * 0.3).astype(np.float32)
    return x


def _loudness_scores(samples: np.ndarray) -> np.ndarray:
    """A stand-in detector: a window is a cough where it is loud (as a real one
    would be there), from that window's samples alone."""
    frames = yamnet.frame(samples).astype(np.float64)
    return (np.sqrt(np.mean(frames**2, axis=1)) > 0.02).astype(np.float32)


@pytest.mark.parametrize("windows_per_segment", [1, 7, 125])
def test_a_recording_read_a_segment_at_a_time_gives_the_whole_recordings_events(
    tmp_path: Path, windows_per_segment: int
) -> None:
    x = _bursts(200.0, [3.0, 59.9, 60.1, 121.3, 199.5])
    write_wav(tmp_path / "r.wav", x)
    pcm = np.frombuffer((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes(), "<i2")
    whole = (pcm / 32768.0).astype(np.float32)  # what the file decodes to
    calls: list[int] = []

    def scorer(samples: np.ndarray) -> np.ndarray:
        calls.append(len(samples))
        return _loudness_scores(samples)

    scores, energies, duration = counting.analyse(tmp_path / "r.wav", scorer, windows_per_segment)
    assert duration == pytest.approx(200.0)
    n = events.window_count(len(whole))
    assert len(scores) == n
    np.testing.assert_array_equal(scores, _loudness_scores(whole)[:n])
    np.testing.assert_allclose(energies, events.frame_db(whole), atol=1e-9)
    # Memory: no call saw more than one segment of audio.
    assert max(calls) <= (windows_per_segment - 1) * yamnet.HOP + yamnet.WINDOW
    # Refined from the energies, the events are those refined from the samples.
    assert events.detect(scores, 0.5, energies_db=energies) == events.detect(
        scores, 0.5, samples=whole
    )


def test_evaluating_a_folder_needs_an_annotation_beside_each_recording(tmp_path: Path) -> None:
    write_wav(tmp_path / "a.wav", np.zeros(SR, np.float32))
    with pytest.raises(ValueError, match=r"no annotation a\.csv"):
        counting.long_recordings(tmp_path)
    (tmp_path / "a.csv").write_text("start_s,end_s\n")
    assert counting.long_recordings(tmp_path) == [(tmp_path / "a.wav", tmp_path / "a.csv")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no long recordings"):
        counting.long_recordings(tmp_path / "empty")
