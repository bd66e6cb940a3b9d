"""The per-window cough gate's machinery: the recording conditions it is trained
and measured under, window pooling that finds one cough between long silences,
and training on a few real recordings."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from ml import conditions
from ml.backbones import BAND_FEATURES, WINDOW_FEATURES
from ml.bundle import Head, Manifest, read_manifest, write_bundle
from ml.spectrogram import SpectrogramParams
from ml.yamnet import COUGH
from shared.audio import decode
from tests.conftest import YAMNET_MODEL, require

RATE = conditions.SAMPLE_RATE


def power_db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-20))


@pytest.fixture(scope="module")
def samples(cough_file: Path) -> np.ndarray:
    return decode(cough_file.read_bytes(), RATE).samples


def test_every_condition_is_deterministic(samples: np.ndarray) -> None:
    for name in conditions.CONDITIONS:
        first, again = conditions.apply(name, samples, 7), conditions.apply(name, samples, 7)
        np.testing.assert_array_equal(first, again)
        assert first.dtype == np.float32 and np.isfinite(first).all(), name


def test_each_condition_does_what_its_name_says(samples: np.ndarray) -> None:
    padded = conditions.apply("padded_with_silence", samples, 1)
    pad = int(conditions.PAD_S * RATE)
    assert len(padded) == len(samples) + 2 * pad
    assert power_db(padded[:pad]) < power_db(samples) - 30  # faint room tone around it

    noisy = conditions.apply("noise_10db", samples, 1)
    assert power_db(samples) - power_db(noisy - samples) == pytest.approx(10.0, abs=0.5)

    quiet = conditions.apply("quieter_20db", samples, 1)
    assert power_db(samples) - power_db(quiet) == pytest.approx(20.0, abs=0.1)

    phone = conditions.apply("phone_band", samples, 1)
    spectrum = np.abs(np.fft.rfft(phone)) ** 2
    freqs = np.fft.rfftfreq(len(phone), 1 / RATE)
    assert spectrum[freqs > 4000].sum() < 0.01 * spectrum.sum()  # nothing above the line

    wet = conditions.apply("reverberant", samples, 1)
    assert len(wet) > len(samples)  # the tail rings on after the cough


def yamnets_own_cough_gate(folder: Path, threshold: float) -> Path:
    """A window-pooled bundle whose head is YAMNet's own ``Cough`` class."""
    weights = np.zeros(1024 + 521, np.float32)
    weights[1024 + COUGH] = 1.0  # the feature is the class score's logit: sigmoid undoes it
    head = Head(np.zeros_like(weights), np.ones_like(weights), weights, 0.0)
    manifest = Manifest(
        name="yamnet-cough-class",
        version="test",
        backbone={"name": "yamnet", "features": WINDOW_FEATURES, "pooling": "max"},
        spectrogram=SpectrogramParams(),
        labels=("no cough", "cough"),
        threshold=threshold,
    )
    write_bundle(folder, manifest, head)
    return folder


def test_window_pooling_finds_one_cough_between_long_silences(
    tmp_path: Path, cough_files: list[Path]
) -> None:
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    from ml.model import load_model

    gate = load_model(yamnets_own_cough_gate(tmp_path / "gate", 0.5), yamnet_model=YAMNET_MODEL)
    # A clear cough: the first recording on which YAMNet itself is sure.
    cough = next(
        x
        for x in (decode(p.read_bytes(), RATE).samples for p in cough_files[:40])
        if gate.window_scores(x).max() > 0.9
    )
    rng = np.random.default_rng(0)
    silence = (rng.standard_normal(6 * RATE) * conditions.ROOM_NOISE_RMS).astype(np.float32)
    recording = np.concatenate([silence, cough, silence, cough, silence])
    verdict = gate.predict([recording])[0]
    # Not the isolated clip's score: 6 s of lead-in shifts the cough against the 0.48 s
    # window grid (and the runtime's rounding moves it by 1e-6), so allow some margin.
    assert verdict.diagnosis == "cough" and verdict.score > 0.8
    assert verdict.peak is not None
    # Each segment lies on one of the two coughs, never in the silences.
    duration = len(cough) / RATE
    coughs_at = [(6.0, 6.0 + duration), (12.0 + duration, 12.0 + 2 * duration)]
    assert verdict.segments
    for start, end in verdict.segments:
        assert any(start < b + 1.0 and end > a - 1.0 for a, b in coughs_at), verdict.segments
    # The silence alone is refused, and the window it looked at is reported.
    quiet = gate.predict([np.concatenate([silence, silence])])[0]
    assert quiet.diagnosis == "no cough" and quiet.segments == () and quiet.peak is not None


def write_wav(path: Path, samples: np.ndarray) -> None:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())


def test_training_a_window_gate_writes_an_honest_card(
    tmp_path: Path, cough_files: list[Path], cough_metadata: list[dict]
) -> None:
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    from ml.cough_gate import train_cough_gate
    from ml.model import load_model
    from ml.negatives import generate
    from ml.training import TrainOptions

    coughs = tmp_path / "coughs"
    (coughs / "raw").mkdir(parents=True)
    chosen = cough_files[:30]
    for path in chosen:
        (coughs / "raw" / path.name).symlink_to(path)
    names = {p.name for p in chosen}
    (coughs / "metadata.json").write_text(
        json.dumps([m for m in cough_metadata if m["filename"] in names])
    )
    negatives = tmp_path / "negatives"
    negatives.mkdir()
    for name, clip in generate(seed=5, per_kind=3, kinds=["noise", "tones", "room_tone"]):
        write_wav(negatives / f"{name}.wav", clip)

    options = TrainOptions(yamnet_model=YAMNET_MODEL, cache_dir=tmp_path / "cache", progress=False)
    out = tmp_path / "gate"
    report = train_cough_gate(coughs, negatives, out, options, version="test")
    manifest = read_manifest(out)
    assert manifest.backbone == {
        "name": "yamnet",
        # A design with the wideband veto reads each window's channel (one more column).
        "features": BAND_FEATURES if "where wideband" in report["design"] else WINDOW_FEATURES,
        "pooling": "max",
        "detector": report["design"],
    }
    assert (out / "report.json").is_file()
    assert 0.0 < manifest.threshold < 1.0
    assert manifest.threshold == pytest.approx(report["threshold"])
    # Every design was fitted and measured; the chosen one is the best on validation.
    designs = manifest.card["metrics"]["designs"]
    assert len(designs) >= 3 and report["design"] in designs
    best = designs[report["design"]]["validation"]["non_coughs_accepted_per_category"]
    assert best == min(
        d["validation"]["non_coughs_accepted_per_category"] for d in designs.values()
    )
    measured = manifest.card["metrics"]["test"]["coughs_refused"]
    for by_condition in measured.values():
        assert set(by_condition) == set(conditions.CONDITIONS)
    split = json.loads((out / "split.json").read_text())
    assert set(split) <= {"train", "validation", "test"} and split["train"]
    assert not set(split["train"]) & set(split.get("test", []))
    gate = load_model(out, yamnet_model=YAMNET_MODEL)
    assert gate.window_pooled
    verdict = gate.predict([decode(chosen[0].read_bytes(), RATE).samples])[0]
    assert 0.0 <= verdict.score <= 1.0 and verdict.peak is not None


def test_segments_are_marked_on_the_picture_where_they_are(samples: np.ndarray) -> None:
    from ml.spectrogram import MARK_ROWS, mark_segments, picture

    params = SpectrogramParams()
    blank = np.zeros(params.shape, np.float32)
    # The rendered clip starts 1 s into the recording and lasts 4 s.
    marked = mark_segments(blank, params, RATE, [[1.5, 2.0], [10.0, 11.0]])
    columns = np.flatnonzero(marked[-MARK_ROWS:].max(axis=0) == 1.0)
    first = int(np.floor((1.5 - 1.0) * RATE / params.hop_length))
    last = int(np.ceil((2.0 - 1.0) * RATE / params.hop_length))
    assert columns.tolist() == list(range(first, last))  # the second one is outside the clip
    assert marked[:-MARK_ROWS].max() == 0.0  # the spectrogram itself is untouched
    assert picture(samples, params, [[0.0, 0.5]]) != picture(samples, params)
