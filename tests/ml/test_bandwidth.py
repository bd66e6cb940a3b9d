"""The window's channel as ``ml.bandwidth`` reads it: a real cough recorded wideband
reaches above 4 kHz, the same cough through a phone line does not, and noise added
after the phone line (a wideband room) does not make it wideband."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml import bandwidth, conditions, yamnet
from shared.audio import AudioError, decode


@pytest.fixture(scope="module")
def wideband_coughs(cough_files, cough_metadata) -> list[np.ndarray]:
    """Loud windows of a few telegram (48 kHz) recordings of ../shared."""
    telegram = {m["filename"] for m in cough_metadata if m["source"] == "telegram"}
    out = []
    for path in cough_files:
        if path.name not in telegram:
            continue
        try:
            out.append(decode(path.read_bytes(), 16000).samples)
        except AudioError:
            continue
        if len(out) == 12:
            break
    return out


def _loudest_share(samples: np.ndarray) -> float:
    frames = yamnet.frame(samples).astype(np.float64)
    loudest = int(np.argmax(np.mean(frames**2, axis=1)))
    return float(bandwidth.high_share(samples)[loudest])


def test_the_channel_of_a_cough_is_read_from_its_loud_window(wideband_coughs) -> None:
    wide = [_loudest_share(x) for x in wideband_coughs]
    phone = [_loudest_share(conditions.phone_band(x, np.random.default_rng(0)))
             for x in wideband_coughs]  # fmt: skip
    in_noise = [
        _loudest_share(conditions.noise_10db(conditions.phone_band(x, rng), rng))
        for i, x in enumerate(wideband_coughs)
        if (rng := np.random.default_rng(i)) is not None
    ]
    assert sum(s >= bandwidth.WIDEBAND_DB for s in wide) >= len(wide) - 1, wide
    assert max(phone) < bandwidth.WIDEBAND_DB - 10, phone
    # Pink noise fills the high band of every frame alike: the event still reads narrow.
    assert sum(s < bandwidth.WIDEBAND_DB for s in in_noise) >= len(in_noise) - 1, in_noise


def test_one_figure_per_yamnet_window_and_silence_is_never_wideband() -> None:
    for n in (100, yamnet.WINDOW, 16000, 5 * 16000 + 123):
        x = np.zeros(n, np.float32)
        shares = bandwidth.high_share(x)
        assert shares.shape == (len(yamnet.frame(x)),)
        assert (shares <= bandwidth.SILENT_DB + 1e-3).all()
    assert json.dumps(float(bandwidth.high_share(np.zeros(100, np.float32))[0]))
