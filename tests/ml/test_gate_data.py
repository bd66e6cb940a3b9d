"""Which gathered recordings the cough gate may learn from: a source whose
licence does not allow the shipped weights to derive from it is measured on,
never trained on."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ml import conditions
from ml.cough_gate import Clip, read_labelled, split_of
from ml.gate_data import EVAL_ONLY_PREFIX, SOURCES, Source, gather

ESC_CSV = b"""filename,fold,target,category,esc10,src_file,take
1-1-A-21.wav,1,21,sneezing,True,1,A
1-2-A-26.wav,1,26,laughing,False,2,A
1-3-A-30.wav,1,30,door_wood_knock,False,3,A
1-4-A-24.wav,1,24,coughing,False,4,A
1-5-A-22.wav,1,22,clapping,False,5,A
"""


def _picks(source: Source, files: dict[str, bytes]) -> list[tuple[str, str, str, str]]:
    return list(source.select(sorted(files), lambda path: files[path]))


def _source(repo: str) -> Source:
    return next(s for s in SOURCES if s.repo == repo)


def test_only_esc10_of_esc50_is_trained_on() -> None:
    files = {"meta/esc50.csv": ESC_CSV} | {f"audio/1-{i}-A-0.wav": b"" for i in range(9)}
    files |= {f"audio/{line.split(b',')[0].decode()}": b"" for line in ESC_CSV.splitlines()[1:]}
    esc = _source("caitlinnguyen0/ESC-50")
    picks = {path: (source, category) for path, source, category, _ in _picks(esc, files)}
    assert picks == {
        "audio/1-1-A-21.wav": ("esc10", "sneezing"),
        "audio/1-2-A-26.wav": ("eval-esc50-nc", "laughter"),
        "audio/1-3-A-30.wav": ("eval-esc50-nc", "door knocks"),
        "audio/1-4-A-24.wav": ("eval-esc50-nc", "cough"),
        "audio/1-5-A-22.wav": ("eval-esc50-nc", "clapping"),
    }


def test_sources_without_a_training_licence_are_evaluation_only() -> None:
    for source in SOURCES:
        assert len(source.commit) == 40, f"{source.repo} is pinned to a commit"
        if "evaluation only" in source.licence and "trained on" not in source.licence:
            files = {
                "data/train/sound/knock001.wav": b"",
                "data/train/sound/laughter002.wav": b"",
                "data/train/sound/cough003.wav": b"",
            }
            picks = _picks(source, files)
            assert picks, source.repo
            assert all(name.startswith(EVAL_ONLY_PREFIX) for _, name, _, _ in picks)


def test_coswara_recordings_keep_their_participant_for_the_split() -> None:
    files = {
        "Extracted_data/20200413/abcdefghijklmnop/cough-heavy.wav": b"",
        "Extracted_data/20200413/New Folder/abcdefghijklmnop/breathing-deep.wav": b"",
        "Extracted_data/20200413/qrstuvwxyzabcdef/counting-fast.wav": b"",
        "Extracted_data/20200413/qrstuvwxyzabcdef/metadata.json": b"",
    }
    picks = sorted(p[1:] for p in _picks(_source("therealmanraj/coswara"), files))
    assert picks == [
        ("coswara", "breathing", "abcdefghijklmnop_breathing-deep.wav"),
        ("coswara", "cough", "abcdefghijklmnop_cough-heavy.wav"),
        ("coswara", "speech", "qrstuvwxyzabcdef_counting-fast.wav"),
    ]


def test_evaluation_only_recordings_always_land_in_the_test_split() -> None:
    for i in range(200):
        clip = Clip(Path(f"{i}.wav"), i % 2, "eval-dcase2016", "laughter", str(i), str(i))
        assert split_of(clip, seed=0) == "test"
    trained = {
        split_of(Clip(Path(f"{i}.wav"), 0, "esc10", "dog", str(i), str(i)), seed=0)
        for i in range(200)
    }
    assert trained == {"train", "validation", "test"}


def test_gather_reads_a_local_mirror_and_records_each_licence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local copy of one repository at its pinned layout; the others are
    absent from the mirror and would be fetched, so only the selection is run."""
    repo = tmp_path / "mirror" / "vadimostanin2+sneeze-detector" / "repo"
    work = tmp_path / "work"
    (work / "train_sounds" / "16000").mkdir(parents=True)
    for name in ("knocks.wav", "sneezing_real_1.wav", "noise_2.wav", "ahh_all.wav", "e.wav"):
        (work / "train_sounds" / "16000" / name).write_bytes(name.encode())
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "x"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(repo)], check=True)

    # The local copy's HEAD instead of the pinned commit.
    only = dataclasses.replace(_source("vadimostanin2/sneeze-detector"), commit="")
    monkeypatch.setattr("ml.gate_data.SOURCES", (only,))
    counts = gather(tmp_path / "out", tmp_path / "mirror")
    assert counts == {
        "sneeze-detector": {"door knocks": 1, "sneezing": 1, "room noise": 1, "vowels": 1}
    }
    clips = read_labelled(tmp_path / "out")
    assert sorted((c.category, c.label) for c in clips) == [
        ("door knocks", 0),
        ("room noise", 0),
        ("sneezing", 0),
        ("vowels", 0),
    ]
    assert "MIT" in (tmp_path / "out" / "SOURCES.json").read_text()


def test_the_new_conditions_keep_the_cough_and_add_what_they_say() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(3 * 16000) * 0.01).astype(np.float32)
    x[20000:24000] += 0.5  # the cough
    padded = conditions.apply("digital_silence", x, seed=1)
    pad = int(conditions.DIGITAL_PAD_S * 16000)
    assert len(padded) == len(x) + 2 * pad
    assert not padded[:pad].any() and not padded[-pad:].any()
    alone = conditions.apply("single_event", x, seed=1)
    assert len(alone) == int(conditions.EVENT_S * 16000)
    assert np.abs(alone).max() > 0.4  # the loud part was kept


def test_soundmonster_gives_only_its_cc0_and_cc_by_recordings() -> None:
    files = {
        "Public domain/knock door.mp3": b"",
        "Public domain/laughter sitcom audience crowd.mp3": b"",
        "Public domain/cough.mp3": b"",
        "Attribution license/applause.mp3": b"",
        # "Public domain" without a CC0 deed (a Wikimedia bugle call, a radio click):
        "Public domain/army reveille bugle military attack.mp3": b"",
        "Public domain/radio mic on MDC1200 Echo.mp3": b"",
        "Attribution license/desktop.ini": b"",
        "README.md": b"",
    }
    picks = sorted((*p[1:3], p[0]) for p in _picks(_source("jonjonsson/SoundMonster"), files))
    assert picks == [
        ("soundmonster", "clapping", "Attribution license/applause.mp3"),
        ("soundmonster", "cough", "Public domain/cough.mp3"),
        ("soundmonster", "door knocks", "Public domain/knock door.mp3"),
        ("soundmonster", "laughter", "Public domain/laughter sitcom audience crowd.mp3"),
    ]
    from ml.gate_data import SOUND_MONSTER

    assert {licence for _, licence in SOUND_MONSTER.values()} <= {
        "CC0", "CC BY 3.0", "CC BY 4.0"
    }  # fmt: skip
