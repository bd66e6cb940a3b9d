"""When the cough gate refuses, the message says why in words a person can act on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.audio import decode
from worker.pipeline import no_cough_message

RATE = 16000


def test_a_faint_recording_is_called_too_quiet() -> None:
    rng = np.random.default_rng(0)
    faint = (rng.standard_normal(3 * RATE) * 10 ** (-55 / 20)).astype(np.float32)
    assert "too quiet" in no_cough_message(faint)


def test_steady_loud_noise_is_called_noise() -> None:
    rng = np.random.default_rng(0)
    hiss = (rng.standard_normal(4 * RATE) * 0.1).astype(np.float32)
    assert "background noise" in no_cough_message(hiss)


def test_a_clear_sound_that_is_not_a_cough_is_called_that(cough_file: Path) -> None:
    # Loud enough and standing out from its background: what is missing is a cough.
    samples = decode(cough_file.read_bytes(), RATE).samples
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(2 * RATE) * 1e-4).astype(np.float32)
    message = no_cough_message(np.concatenate([quiet, samples, quiet]))
    assert message.startswith("No cough-like sound was found")
    for said in (message, no_cough_message(samples * 0.001)):
        assert said.endswith(".") and "not analysed" in said
