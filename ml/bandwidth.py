"""What each YAMNet window's spectrum says about the channel it came through.

A cough recorded through a phone line (8 kHz, 300-3,400 Hz) has no energy above
4 kHz, and YAMNet hears many such coughs as speech or laughter; a cough recorded
wideband (a phone's own microphone, a room microphone) reaches above 4 kHz. A
detector may then trust YAMNet's voice-confuser evidence on wideband windows only
(``ml.detector.WindowDetector.wideband_veto``; what that gave is measured in
docs/model-card.md#cough-gate).

The measure is the loud event's own high band, not the window's: noise added
after the phone line (a wideband room, pink noise) fills the high band of every
frame alike, while the event rises only in the low band. Per 25 ms frame (10 ms
hop, YAMNet's own STFT framing) the power in ``LOW_HZ`` and ``HIGH_HZ`` is taken;
the *event* frames are those within ``EVENT_DB`` of the loudest low-band frame,
the *floor* frames the quietest ``FLOOR_SHARE`` of frames by low band; the
measure is the event's high-band power less the floor's, over the event's
low-band power, in dB (:func:`high_share_db`). It is computed from the window's
samples, beside the one YAMNet pass, never by a second one.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ml import yamnet

FRAME = 400  # 25 ms
FRAME_HOP = 160  # 10 ms
FFT = 512
LOW_HZ = (300.0, 3400.0)
HIGH_HZ = (4000.0, 7500.0)
EVENT_DB = 6.0
FLOOR_SHARE = 0.2
FLOOR_POWER = 1e-12  # keeps digital silence finite
SILENT_DB = -120.0
VERSION = 1  # part of every cached measure's key
# A window is wideband where its event's high band is at least this (dB): phone-line
# coughs read -45 dB and less in 95 % of their windows (in 10 dB pink noise: -33 dB
# and less in 95 %), wideband coughs -30 dB and more, laughs -38 dB and more.
WIDEBAND_DB = -35.0

_freqs = np.fft.rfftfreq(FFT, 1 / yamnet.SAMPLE_RATE)
_LOW = (_freqs >= LOW_HZ[0]) & (_freqs < LOW_HZ[1])
_HIGH = (_freqs >= HIGH_HZ[0]) & (_freqs < HIGH_HZ[1])
_HANN = np.hanning(FRAME).astype(np.float32)
_STEP = yamnet.HOP // FRAME_HOP  # frames from one window's start to the next's
assert _STEP * FRAME_HOP == yamnet.HOP


def band_stats(samples: np.ndarray) -> np.ndarray:
    """Per YAMNet window of ``samples`` (16 kHz; ``ml.yamnet.frame``), four dB
    figures: the event frames' low and high band power, the floor frames' low and
    high band power, ``(windows, 4)``. The 25 ms frames are computed once for the
    whole clip: a window's hop (0.48 s) is a whole number of frame hops, so each
    window's frames are a slice of them."""
    x = np.asarray(samples, dtype=np.float32)
    if len(x) < yamnet.WINDOW:
        x = np.pad(x, (0, yamnet.WINDOW - len(x)))
    windows = 1 + (len(x) - yamnet.WINDOW) // yamnet.HOP
    per_window = 1 + (yamnet.WINDOW - FRAME) // FRAME_HOP
    frames = (windows - 1) * _STEP + per_window
    index = np.arange(FRAME)[None, :] + FRAME_HOP * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(x[index] * _HANN, FFT)) ** 2
    low = sliding_window_view(spectrum[:, _LOW].sum(axis=1) + FLOOR_POWER, per_window)[::_STEP]
    high = sliding_window_view(spectrum[:, _HIGH].sum(axis=1) + FLOOR_POWER, per_window)[::_STEP]
    low_db = 10 * np.log10(low)
    event = low_db >= low_db.max(axis=1, keepdims=True) - EVENT_DB
    floor = np.argsort(low_db, axis=1, kind="stable")[:, : max(1, int(FLOOR_SHARE * per_window))]

    def mean(power: np.ndarray, where: np.ndarray) -> np.ndarray:
        return np.asarray((power * where).sum(axis=1) / where.sum(axis=1))

    floor_low = np.take_along_axis(low, floor, axis=1).mean(axis=1)
    floor_high = np.take_along_axis(high, floor, axis=1).mean(axis=1)
    figures = np.stack([mean(low, event), mean(high, event), floor_low, floor_high], axis=1)
    return np.asarray(10 * np.log10(figures), np.float32)


def high_share_db(stats: np.ndarray) -> np.ndarray:
    """Each window's event power above 4 kHz, less the floor's there (what stationary
    noise puts in every frame), over its power at 300-3,400 Hz, in dB (from
    :func:`band_stats`); ``SILENT_DB`` where the event adds nothing above 4 kHz."""
    power = 10 ** (np.asarray(stats, np.float64) / 10)
    added = np.maximum(power[:, 1] - power[:, 3], 10 ** (SILENT_DB / 10) * power[:, 0])
    return np.asarray(10 * np.log10(added / power[:, 0]), np.float32)


def high_share(samples: np.ndarray) -> np.ndarray:
    """:func:`high_share_db` of each YAMNet window of ``samples``, ``(windows,)``."""
    return high_share_db(band_stats(samples))
