"""Simple acoustic features of a recording, beside YAMNet's embedding.

Every feature here is independent of the recording's absolute level (a ratio,
a count or a frequency), so that it cannot carry how loud a call was recorded:
loudness is measured apart, as a baseline (:func:`loudness`).
"""

from __future__ import annotations

import numpy as np

from ml import yamnet

FRAME = 512  # 32 ms at 16 kHz
HOP = 256
# A YAMNet window "holds a cough" when the Cough class scores at least this.
COUGH_SCORE = 0.3
NAMES = (
    "duration_s",
    "cough_windows",
    "cough_window_share",
    "cough_score_max",
    "centroid_hz_mean",
    "centroid_hz_sd",
    "rolloff_hz_mean",
    "rolloff_hz_sd",
    "crest_db",
    "active_share",
    "envelope_db_sd",
    "zero_crossing_rate",
)
SIZE = len(NAMES)


def features(samples: np.ndarray, sample_rate: int, cough_scores: np.ndarray) -> np.ndarray:
    """``cough_scores``: YAMNet's Cough score per window of the same recording."""
    import librosa  # imported here: the API process never needs it

    x = np.asarray(samples, dtype=np.float32)
    if len(x) < FRAME:
        x = np.pad(x, (0, FRAME - len(x)))
    duration, active, crest, spread = _envelope(x, len(samples) / sample_rate)
    spectrum = np.abs(librosa.stft(x, n_fft=FRAME, hop_length=HOP)) ** 2
    energy = spectrum.sum(axis=0)
    # Spectral shape where there is sound: silent frames have no meaningful centroid.
    loud = energy >= energy.max() * 1e-3 if energy.max() > 0 else np.ones_like(energy, bool)
    centroid = librosa.feature.spectral_centroid(S=spectrum, sr=sample_rate, n_fft=FRAME)[0][loud]
    rolloff = librosa.feature.spectral_rolloff(S=spectrum, sr=sample_rate, n_fft=FRAME)[0][loud]
    cough_windows = np.asarray(cough_scores) >= COUGH_SCORE
    zcr = librosa.feature.zero_crossing_rate(x, frame_length=FRAME, hop_length=HOP)[0]
    return np.array(
        [
            duration,
            float(cough_windows.sum()),
            float(cough_windows.mean()) if cough_windows.size else 0.0,
            float(np.max(cough_scores)) if np.size(cough_scores) else 0.0,
            float(centroid.mean()),
            float(centroid.std()),
            float(rolloff.mean()),
            float(rolloff.std()),
            crest,
            active,
            spread,
            float(zcr.mean()),
        ],
        dtype=np.float32,
    )


def _envelope(
    x: np.ndarray, duration: float, active_db: float = 20.0
) -> tuple[float, float, float, float]:
    """Duration, share of 32 ms frames within ``active_db`` dB of the loudest, crest
    factor (peak over RMS, dB) and the spread of the frame levels (dB): how the clip
    was cut and how peaky it is, whatever its level."""
    import librosa

    rms = librosa.feature.rms(y=x, frame_length=FRAME, hop_length=HOP)[0]
    rms_db = 20 * np.log10(np.maximum(rms, 1e-8))
    peak = float(np.max(np.abs(x)))
    mean_rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return (
        duration,
        float((rms_db >= rms_db.max() - active_db).mean()),
        20 * np.log10(max(peak, 1e-8) / max(mean_rms, 1e-8)),
        float(rms_db[rms_db >= rms_db.max() - 60.0].std()),
    )


# The acoustic features that say how a clip was cut rather than what it holds.
TRIMMING = ("duration_s", "active_share", "crest_db", "envelope_db_sd")


def trimming(samples: np.ndarray, sample_rate: int, active_db: float = 20.0) -> np.ndarray:
    """:data:`TRIMMING` of a decoded recording, in that order (the trimming-only
    baseline's features; the same values :func:`features` computes). The service's
    cohort baselines count active frames within 30 dB (worker.pipeline)."""
    x = np.asarray(samples, dtype=np.float32)
    if len(x) < FRAME:
        x = np.pad(x, (0, FRAME - len(x)))
    duration, active, crest, spread = _envelope(x, len(samples) / sample_rate, active_db)
    return np.array([duration, active, crest, spread], dtype=np.float32)


def cough_column(scores: np.ndarray) -> np.ndarray:
    return np.asarray(scores)[:, yamnet.COUGH]


def loudness(samples: np.ndarray) -> np.ndarray:
    """RMS and peak level (dBFS) of the decoded recording: the loudness-only baseline's
    two features, never a model's."""
    x = np.asarray(samples, dtype=np.float64)
    rms = float(np.sqrt(np.mean(np.square(x)))) if x.size else 0.0
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return np.array(
        [20 * np.log10(max(rms, 1e-8)), 20 * np.log10(max(peak, 1e-8))], dtype=np.float32
    )
