"""The one spectrogram renderer, used by training and by serving.

decode -> mono -> resample (``shared.audio.decode``) -> loudest fixed-length
window -> mel power spectrogram -> dB relative to *this clip's* maximum ->
values in [0, 1]. Its parameters are stored in each model bundle's manifest,
so a bundle is always served with the renderer settings it was trained with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class SpectrogramParams:
    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 128
    fmin: float = 20.0
    fmax: float = 8000.0
    top_db: float = 80.0
    clip_seconds: float = 4.0

    @property
    def clip_samples(self) -> int:
        return round(self.clip_seconds * self.sample_rate)

    @property
    def frames(self) -> int:
        # librosa pads by n_fft // 2 on each side (center=True).
        return 1 + self.clip_samples // self.hop_length

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_mels, self.frames)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpectrogramParams:
        return cls(**data)


def loudest_start(samples: np.ndarray, length: int, hop: int) -> int:
    """Where the ``length``-sample window with the most energy starts (0 if shorter)."""
    if len(samples) <= length:
        return 0
    energy = np.concatenate(([0.0], np.cumsum(samples.astype(np.float64) ** 2)))
    starts = np.arange(0, len(samples) - length + 1, hop)
    window_energy = energy[starts + length] - energy[starts]
    return int(starts[int(np.argmax(window_energy))])


def loudest_window(samples: np.ndarray, length: int, hop: int) -> np.ndarray:
    """The ``length``-sample window with the most energy, zero-padded if the clip is shorter.

    Coughs are short and loud: for long recordings this keeps the cough and
    drops the surrounding silence or talk, deterministically.
    """
    if len(samples) <= length:
        return np.pad(samples, (0, length - len(samples)))
    start = loudest_start(samples, length, hop)
    return samples[start : start + length]


def render(samples: np.ndarray, params: SpectrogramParams) -> np.ndarray:
    """Mono waveform at ``params.sample_rate`` -> float32 array ``params.shape`` in [0, 1]."""
    import librosa  # imported here: the API process never needs it

    clip = loudest_window(
        np.asarray(samples, dtype=np.float32), params.clip_samples, params.hop_length
    )
    power = librosa.feature.melspectrogram(
        y=clip,
        sr=params.sample_rate,
        n_fft=params.n_fft,
        hop_length=params.hop_length,
        n_mels=params.n_mels,
        fmin=params.fmin,
        fmax=params.fmax,
        power=2.0,
    )
    db = librosa.power_to_db(power, ref=np.max, top_db=params.top_db)
    image = (db + params.top_db) / params.top_db
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def warm_up(params: SpectrogramParams) -> None:
    """Run the renderer once so numba compiles before the first real job."""
    rng = np.random.default_rng(0)
    render(rng.standard_normal(params.sample_rate).astype(np.float32) * 0.1, params)


MARK_ROWS = 4  # the band along the top of the picture that marks a segment


def mark_segments(
    image: np.ndarray,
    params: SpectrogramParams,
    clip_start: int,
    segments: Sequence[Sequence[float]],
) -> np.ndarray:
    """A copy of ``image`` with a bright band along its top edge over each segment
    (seconds from the recording's start) that falls inside the rendered clip,
    which starts at sample ``clip_start``."""
    marked = image.copy()
    for start_s, end_s in segments:
        first = int(np.floor((start_s * params.sample_rate - clip_start) / params.hop_length))
        last = int(np.ceil((end_s * params.sample_rate - clip_start) / params.hop_length))
        first, last = max(first, 0), min(last, image.shape[1])
        if last > first:
            marked[-MARK_ROWS:, first:last] = 1.0  # top rows: the highest mel bands
    return marked


def picture(
    samples: np.ndarray, params: SpectrogramParams, segments: Sequence[Sequence[float]] = ()
) -> bytes:
    """The PNG people see: the rendered clip, with the cough gate's segments marked."""
    image = render(samples, params)
    if segments:
        start = loudest_start(np.asarray(samples), params.clip_samples, params.hop_length)
        image = mark_segments(image, params, start, segments)
    return to_png(image)


def to_png(image: np.ndarray) -> bytes:
    """The rendered spectrogram as the PNG people see: low frequencies at the bottom."""
    import io

    from matplotlib import colormaps
    from PIL import Image

    rgba = colormaps["magma"](np.clip(image[::-1, :], 0.0, 1.0), bytes=True)
    buf = io.BytesIO()
    # Made once per analysed clip, on the worker's hot path: fast zlib (level 1)
    # encodes in ~7 ms instead of ~34 ms with optimize=True, for files ~18 % larger.
    Image.fromarray(rgba[..., :3]).resize((image.shape[1] * 2, image.shape[0] * 2)).save(
        buf, format="PNG", compress_level=1
    )
    return buf.getvalue()
