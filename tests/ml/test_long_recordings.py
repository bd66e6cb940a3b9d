"""``tussis make-long-recordings`` (ml/long_recordings.py): real coughs placed at
known times among other sounds over a background, the annotation written as they
are placed, from one split only."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ml import bandwidth, events
from ml.cough_gate import read_labelled, split_of
from ml.counting import read_annotation
from ml.long_recordings import make_long_recordings
from ml.negatives import write_wav
from shared.audio import decode

RATE = 16000


def _wav(path: Path, samples: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, samples)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory, cough_files, cough_metadata) -> Path:
    root = tmp_path_factory.mktemp("material")
    coughs = root / "coughs"
    (coughs / "raw").mkdir(parents=True)
    chosen = cough_files[:40]
    for path in chosen:
        (coughs / "raw" / path.name).symlink_to(path)
    names = {p.name for p in chosen}
    (coughs / "metadata.json").write_text(
        json.dumps([m for m in cough_metadata if m["filename"] in names])
    )
    rng = np.random.default_rng(0)
    labelled = root / "labelled"
    t = np.arange(int(1.5 * RATE)) / RATE
    for i in range(30):  # tones: some land in each split
        tone = 0.3 * np.sin(2 * np.pi * (300 + 37 * i) * t)
        _wav(labelled / "tones" / "music" / f"tone-{i}.wav", tone)
    for i in range(6):
        _wav(labelled / "eval-elsewhere" / "laughter" / f"laugh-{i}.wav", tone * (i + 1) / 7)
    noise = np.cumsum(rng.standard_normal(20 * RATE)) * 1e-3  # brown noise: a background
    _wav(labelled / "noises" / "room noise" / "hum.wav", noise - noise.mean())
    return root


def test_coughs_are_placed_where_the_annotation_says_and_nowhere_else(
    material: Path, tmp_path: Path
) -> None:
    out = tmp_path / "long"
    record = make_long_recordings(
        out, material / "coughs", material / "labelled", "test", seed=4, count=2, minutes=1.5,
        coughs_per_hour=(120.0, 60.0),
    )  # fmt: skip
    assert len(record["recordings"]) == 2 and record["with_evaluation_only"] is False
    # From the test split only; evaluation-only sources left out.
    test_tones = {c.path.name for c in read_labelled(material / "labelled")
                  if c.category == "music" and split_of(c, 0) == "test"}  # fmt: skip
    placed_any_cough = False
    for made in record["recordings"]:
        name = made["name"]
        audio = decode((out / f"{name}.wav").read_bytes(), RATE).samples
        assert len(audio) == int(1.5 * 60 * RATE)
        # Room tone everywhere: no 10 ms of digital silence.
        assert float(events.frame_db(audio).min()) > -100
        with open(out / f"{name}.placed.csv") as fh:
            placed = list(csv.DictReader(fh))
        others = [p for p in placed if p["kind"] == "other"]
        coughs = [p for p in placed if p["kind"] == "cough"]
        assert all(p["file"] in test_tones for p in others)
        annotation = read_annotation(out / f"{name}.csv")
        assert len(annotation) == made["cough_events"]
        placed_any_cough |= bool(coughs)
        background = float(np.median(events.frame_db(audio)))
        for span in annotation:
            # Each annotated cough lies inside one placed cough, apart from every
            # other sound, and is loud above the background.
            assert any(float(c["start_s"]) <= span.start_s < span.end_s <= float(c["end_s"])
                       for c in coughs)  # fmt: skip
            assert all(span.end_s <= float(o["start_s"]) or span.start_s >= float(o["end_s"])
                       for o in others)  # fmt: skip
            part = audio[int(span.start_s * RATE) : int(span.end_s * RATE)]
            assert float(events.frame_db(part).max()) > background + 20
    assert placed_any_cough
    again = tmp_path / "again"
    make_long_recordings(
        again, material / "coughs", material / "labelled", "test", seed=4, count=2, minutes=1.5,
        coughs_per_hour=(120.0, 60.0),
    )  # fmt: skip
    for made in record["recordings"]:
        for suffix in (".wav", ".csv"):
            name = made["name"] + suffix
            assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_evaluation_only_sounds_go_into_a_reported_set_only(material: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="never go into a set anything is chosen on"):
        make_long_recordings(
            tmp_path / "v", material / "coughs", material / "labelled", "validation",
            with_evaluation_only=True,
        )  # fmt: skip
    record = make_long_recordings(
        tmp_path / "t", material / "coughs", material / "labelled", "test", seed=1, count=1,
        minutes=3, with_evaluation_only=True,
    )  # fmt: skip
    assert "laughter" in record["other_categories"]
    with open(tmp_path / "t" / f"{record['recordings'][0]['name']}.placed.csv") as fh:
        placed = list(csv.DictReader(fh))
    assert any(p["source"] == "eval-elsewhere" for p in placed)


def test_a_night_goes_through_one_channel(
    material: Path, tmp_path: Path, cough_files, cough_metadata
) -> None:
    phone = make_long_recordings(
        tmp_path / "p", material / "coughs", material / "labelled", "test", seed=2, count=1,
        minutes=2, coughs_per_hour=(120.0,), channel="phone",
    )  # fmt: skip
    name = phone["recordings"][0]["name"]
    audio = decode((tmp_path / "p" / f"{name}.wav").read_bytes(), RATE).samples
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / RATE)
    assert spectrum[freqs > 4000].sum() < 1e-4 * spectrum[(freqs > 300) & (freqs < 3400)].sum()
    # The fixture's test split holds call-center coughs only: none goes into a
    # wideband night.
    narrow = make_long_recordings(
        tmp_path / "n", material / "coughs", material / "labelled", "test", seed=2, count=1,
        minutes=4, coughs_per_hour=(480.0,), channel="wideband",
    )  # fmt: skip
    assert narrow["coughs"] == ["coughs:call-center"] and narrow["narrowband_coughs_left_out"]
    assert narrow["recordings"][0]["cough_placements"] == 0
    telegram = [m for m in cough_metadata if m["source"] == "telegram"][:30]
    coughs_dir = tmp_path / "telegram"
    (coughs_dir / "raw").mkdir(parents=True)
    for m in telegram:
        (coughs_dir / "raw" / m["filename"]).symlink_to(cough_files[0].parent / m["filename"])
    (coughs_dir / "metadata.json").write_text(json.dumps(telegram))
    wide = make_long_recordings(
        tmp_path / "w", coughs_dir, material / "labelled", "test", seed=2,
        count=1, minutes=4, coughs_per_hour=(480.0,), channel="wideband",
    )  # fmt: skip
    name = wide["recordings"][0]["name"]
    with open(tmp_path / "w" / f"{name}.placed.csv") as fh:
        coughs = [p for p in csv.DictReader(fh) if p["kind"] == "cough"]
    assert coughs and {p["source"] for p in coughs} == {"telegram:telegram"}, coughs
    samples = decode((tmp_path / "w" / f"{name}.wav").read_bytes(), RATE).samples
    for p in coughs:  # and each placed cough reads wideband where it lies
        start, end = int(float(p["start_s"]) * RATE), int(float(p["end_s"]) * RATE)
        assert np.median(bandwidth.high_share(samples[start:end])) >= bandwidth.WIDEBAND_DB
