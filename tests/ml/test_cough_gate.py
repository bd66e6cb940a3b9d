"""The shipped cough gate: keeps at least 95 % of the real coughs in ../shared and
rejects speech, music, noise and near-silence it has never seen."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from ml.negatives import KINDS, generate
from shared.audio import AudioError, check_usable, decode
from shared.config import PROJECT_ROOT
from tests.conftest import YAMNET_MODEL, require

GATE = PROJECT_ROOT / "models" / "cough-gate"


@pytest.fixture(scope="module")
def gate():
    require(YAMNET_MODEL.is_file(), f"no YAMNet model at {YAMNET_MODEL}")
    from ml.model import load_model

    return load_model(GATE, yamnet_model=YAMNET_MODEL)


def test_gate_detects_at_least_95_percent_of_real_coughs(
    gate, cough_files: list[Path], cough_metadata: list[dict]
) -> None:
    source = {m["filename"]: m["source"] for m in cough_metadata}
    detected: dict[str, list[bool]] = defaultdict(list)
    for path in cough_files:
        audio = decode(path.read_bytes(), 16000)
        try:
            check_usable(audio, 0.3, 120.0, -60.0)
        except AudioError:
            continue  # refused at the door, never reaches the gate
        verdict = gate.predict([audio.samples])[0]
        detected[source[path.name]].append(verdict.diagnosis == "cough")
    everything = [d for values in detected.values() for d in values]
    assert len(everything) > 1000
    rates = {s: float(np.mean(v)) for s, v in detected.items()}
    assert np.mean(everything) >= 0.95, rates
    assert min(rates.values()) >= 0.9, rates  # neither source is sacrificed


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_gate_rejects_sounds_that_are_not_coughs(gate, kind: str) -> None:
    if kind.startswith("speech"):
        require(shutil.which("espeak-ng") is not None, "espeak-ng is not installed")
    # A seed the gate's training negatives (seed 1) never used.
    for name, samples in generate(seed=20261123, per_kind=6, kinds=[kind]):
        verdict = gate.predict([samples])[0]
        assert verdict.diagnosis == "no cough", f"{name}: cough score {verdict.score:.3f}"
        assert verdict.score < gate.manifest.threshold
