"""Decoding and checking uploaded audio.

PyAV (FFmpeg libraries inside the wheel) decodes every container browsers and
phones produce: WAV, MP3, FLAC, Ogg/Opus, WebM/Opus (MediaRecorder in Chrome
and Firefox) and M4A/AAC (Safari). The same :func:`decode` feeds the API's
checks, the worker and training, so they all see the same samples.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np


class AudioError(Exception):
    """Audio that cannot be analysed. ``code`` is machine-readable and stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, in [-1, 1]
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    codec: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / float(self.sample_rate)


# Far above full scale (1.0 in float formats): a broken or hostile scale factor, not a
# recording. Such samples are finite, but their squares overflow float32 in the models
# (a float WAV scaled by 1e38 was scored NaN), so they are refused here, at +24 dBFS.
MAX_PEAK = 16.0

# What PyAV raises on damaged or hostile bytes besides its own errors: a damaged header
# can leave a stream without a rate (AttributeError), and odd rates or layouts can make
# the resampler refuse (ValueError, OverflowError). Any of them means "not usable audio".
_DECODE_ERRORS = (
    av.FFmpegError,
    ArithmeticError,
    AttributeError,
    EOFError,
    LookupError,
    OSError,
    RuntimeError,
    TypeError,
    ValueError,
)


def decode(data: bytes, sample_rate: int | None = None, max_seconds: float = 600.0) -> DecodedAudio:
    """Decode to mono float32, resampled to ``sample_rate`` (the source rate if ``None``).

    Decoding stops after ``max_seconds`` of output so a tiny file that claims
    hours of audio cannot exhaust memory; callers see the truncated length and
    reject it as too long.
    """
    if not data:
        raise AudioError("empty_audio", "The uploaded file is empty.")
    try:
        # Tags are never read, so tags in another encoding than UTF-8 (Latin-1 INFO
        # chunks in WAV files are common) must not make a valid recording unreadable.
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except _DECODE_ERRORS as exc:
        raise AudioError(
            "undecodable_audio", "The file could not be read as audio (unknown or damaged format)."
        ) from exc
    try:
        with container:
            return _decode(container, sample_rate, max_seconds)
    except AudioError:
        raise
    except _DECODE_ERRORS as exc:
        raise AudioError(
            "undecodable_audio", "The audio stream is damaged and could not be decoded."
        ) from exc


def _decode(
    container: av.container.InputContainer, sample_rate: int | None, max_seconds: float
) -> DecodedAudio:
    stream = next(iter(container.streams.audio), None)
    if stream is None:
        raise AudioError("undecodable_audio", "The file contains no audio track.")
    source_rate = int(stream.rate or stream.codec_context.sample_rate or 0)
    channels = int(stream.codec_context.channels or 0)
    codec = stream.codec_context.name
    out_rate = int(sample_rate or source_rate or 16000)
    limit = int(max_seconds * out_rate) + 1
    resampler = av.AudioResampler(format="flt", layout="mono", rate=out_rate)
    chunks: list[np.ndarray] = []
    total = 0
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            chunk = out.to_ndarray().reshape(-1)
            chunks.append(chunk)
            total += len(chunk)
        if total >= limit:
            break
    else:
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    samples = (
        np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
    )
    if samples.size and not (
        np.all(np.isfinite(samples)) and float(np.max(np.abs(samples))) <= MAX_PEAK
    ):
        raise AudioError(
            "undecodable_audio",
            "The decoded audio contains invalid sample values (not numbers, or far beyond "
            "full scale).",
        )
    return DecodedAudio(
        samples=samples,
        sample_rate=out_rate,
        source_sample_rate=source_rate or out_rate,
        source_channels=channels,
        codec=codec,
    )


def peak_dbfs(samples: np.ndarray) -> float:
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return -np.inf if peak <= 0 else 20.0 * float(np.log10(peak))


def check_usable(
    audio: DecodedAudio, min_duration_s: float, max_duration_s: float, silence_dbfs: float
) -> None:
    """Raise :class:`AudioError` for audio the model cannot say anything useful about."""
    if audio.samples.size == 0:
        raise AudioError("empty_audio", "The file decodes to no audio samples at all.")
    duration = audio.duration_s
    if duration < min_duration_s:
        raise AudioError(
            "audio_too_short",
            f"The recording lasts {duration:.2f} s; at least {min_duration_s:g} s are needed.",
        )
    if duration > max_duration_s:
        raise AudioError(
            "audio_too_long",
            f"The recording lasts more than {max_duration_s:g} s, the longest accepted; "
            "trim it to the cough.",
        )
    level = peak_dbfs(audio.samples)
    if level < silence_dbfs:
        raise AudioError(
            "silent_audio",
            f"The recording is silent (peak level {level:.0f} dBFS); check the microphone.",
        )
