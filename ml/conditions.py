"""The recording conditions a cough gate must cope with, as transformations of
a clean clip: what a person produces who presses *Start*, waits, coughs and
presses *Stop*; a noisy room; a phone line; a quiet microphone; a reverberant
room. Training augments with them and evaluation reports per condition, so the
two always mean the same thing by each name.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.signal as sps

# Part of every cached feature's key: change it when a transformation changes.
VERSION = 2
SAMPLE_RATE = 16000
PAD_S = 3.0  # silence before and after the cough
ROOM_NOISE_RMS = 3e-4  # about -70 dBFS: a quiet room through a phone microphone
NOISE_SNR_DB = 10.0
QUIETER_DB = 20.0
REVERB_RT60_S = 0.5
DIGITAL_PAD_S = 2.0
EVENT_S = 0.6


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise: closer to rooms, fans and traffic than white noise."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    pink -= pink.mean()
    return (pink / (np.sqrt(np.mean(pink**2)) + 1e-12)).astype(np.float32)


def original(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x


def padded_with_silence(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pad = int(PAD_S * SAMPLE_RATE)
    room = pink(len(x) + 2 * pad, rng) * ROOM_NOISE_RMS
    room[pad : pad + len(x)] += x
    return room


def digital_silence(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exact zeros around the sound, as apps that trim and pad write, and as
    clip collections (ESC-50) are cut: no room tone at all."""
    pad = np.zeros(int(DIGITAL_PAD_S * SAMPLE_RATE), dtype=np.float32)
    return np.concatenate([pad, x, pad])


def single_event(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The loudest ``EVENT_S`` of the recording on its own: one hand-segmented
    cough (or knock, or laugh), shorter than one YAMNet window."""
    n = int(EVENT_S * SAMPLE_RATE)
    if len(x) <= n:
        return x
    # Energy in every n // 4 samples, from a running sum (a convolution is
    # quadratic on minute-long recordings).
    k = n // 4
    running = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    peak = int((running[k:] - running[:-k]).argmax()) + k // 2
    start = int(np.clip(peak - n // 3, 0, len(x) - n))
    return x[start : start + n].copy()


def noise_10db(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    signal_power = float(np.mean(x.astype(np.float64) ** 2)) + 1e-12
    noise = pink(len(x), rng) * np.sqrt(signal_power / 10 ** (NOISE_SNR_DB / 10))
    return (x + noise).astype(np.float32)


def phone_band(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """8 kHz telephone channel: 300-3,400 Hz, resampled back to the model's rate."""
    narrow = sps.resample_poly(x, 1, 2)
    sos = sps.butter(4, [300, 3400], btype="band", fs=SAMPLE_RATE // 2, output="sos")
    return sps.resample_poly(sps.sosfilt(sos, narrow), 2, 1)[: len(x)].astype(np.float32)


def quieter_20db(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (x * 10 ** (-QUIETER_DB / 20)).astype(np.float32)


def reverberant(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: exponentially decaying noise with the given RT60."""
    t = np.arange(int(1.2 * REVERB_RT60_S * SAMPLE_RATE)) / SAMPLE_RATE
    impulse = rng.standard_normal(len(t)) * np.exp(-6.9 * t / REVERB_RT60_S) * 0.3
    impulse[0] = 1.0
    wet = sps.fftconvolve(x, impulse)[: len(x) + len(t) // 2]
    peak = float(np.max(np.abs(wet))) + 1e-12
    return (wet / peak * float(np.max(np.abs(x)))).astype(np.float32)


Condition = Callable[[np.ndarray, np.random.Generator], np.ndarray]

CONDITIONS: dict[str, Condition] = {
    "original": original,
    "padded_with_silence": padded_with_silence,
    "noise_10db": noise_10db,
    "phone_band": phone_band,
    "quieter_20db": quieter_20db,
    "reverberant": reverberant,
    "digital_silence": digital_silence,
    "single_event": single_event,
}


def apply(name: str, samples: np.ndarray, seed: int) -> np.ndarray:
    """``samples`` (16 kHz mono) as recorded under condition ``name``; deterministic per seed."""
    return CONDITIONS[name](np.asarray(samples, dtype=np.float32), np.random.default_rng(seed))
