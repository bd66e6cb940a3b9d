"""Decoding and checking uploaded audio.

PyAV (FFmpeg libraries inside the wheel) decodes every container browsers and
phones produce: WAV, MP3, FLAC, Ogg/Opus, WebM/Opus (MediaRecorder in Chrome
and Firefox) and M4A/AAC (Safari). The same :func:`decode` feeds the API's
checks, the worker and training, so they all see the same samples.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

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


@dataclass(frozen=True)
class ProbedAudio:
    """What :func:`check_usable` needs to know about a recording, read by :func:`probe`
    without keeping (or resampling) its samples: the figures :func:`decode` would give."""

    n_samples: int  # mono samples at ``sample_rate`` (decode's ``len(samples)``)
    peak: float  # the largest |sample| of decode's mono float32 samples
    sample_rate: int
    source_channels: int
    codec: str

    @property
    def duration_s(self) -> float:
        return self.n_samples / float(self.sample_rate)


# Far above full scale (1.0 in float formats): a broken or hostile scale factor, not a
# recording. Such samples are finite, but their squares overflow float32 in the models
# (a float WAV scaled by 1e38 was scored NaN), so they are refused here, at +24 dBFS.
MAX_PEAK = 16.0

# What PyAV raises on damaged or hostile bytes besides its own errors: a damaged header
# can leave a stream without a rate (AttributeError), and odd rates or layouts can make
# the resampler refuse (ValueError, OverflowError). Any of them means "not usable audio".
_T = TypeVar("_T")

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
    return _read(data, lambda container: _decode(container, sample_rate, max_seconds))


def _read(data: bytes, reader: Callable[[av.container.InputContainer], _T]) -> _T:
    """Open ``data`` and run ``reader`` on it, turning every way bytes can fail to be
    audio into the same :class:`AudioError` codes and messages (decode and probe share it)."""
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
            return reader(container)
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
    _refuse_invalid(samples)
    return DecodedAudio(
        samples=samples,
        sample_rate=out_rate,
        source_sample_rate=source_rate or out_rate,
        source_channels=channels,
        codec=codec,
    )


def probe(data: bytes, max_seconds: float = 600.0) -> ProbedAudio:
    """What :func:`decode` (at the source rate) would say about ``data``, for a fraction
    of its cost: the API checks every upload but never needs the samples.

    Most of decode's time goes to PyAV's resampler converting each frame to mono float
    (a filter graph per call, several times the decoding itself). Here the decoded frames
    are read as they are and turned into decode's mono float32 with numpy, the same
    arithmetic libswresample does: integer formats scaled by a power of two, stereo mixed
    as (L + R) / sqrt(2). A stream that is anything else (another layout or format, a rate
    change, frames that differ) is decoded by :func:`decode` itself, so the two agree on
    every upload, hostile ones included. The same errors, codes and messages as decode.
    """
    probed = _read(data, lambda container: _probe(container, max_seconds))
    if probed is None:
        decoded = decode(data, max_seconds=max_seconds)
        return ProbedAudio(
            n_samples=len(decoded.samples),
            peak=float(np.max(np.abs(decoded.samples))) if decoded.samples.size else 0.0,
            sample_rate=decoded.sample_rate,
            source_channels=decoded.source_channels,
            codec=decoded.codec,
        )
    return probed


# Decoded sample formats read without the resampler: numpy dtype, and the offset and
# factor by which libswresample turns them into float ((x - offset) * factor; None: a
# float format, cast as it is).
_NATIVE_FORMATS: dict[str, tuple[str, int, float | None]] = {
    "u8": ("u1", 0x80, 1.0 / (1 << 7)),
    "s16": ("<i2", 0, 1.0 / (1 << 15)),
    "s32": ("<i4", 0, 1.0 / (1 << 31)),
    "flt": ("<f4", 0, None),
    "dbl": ("<f8", 0, None),
}
# libswresample's stereo -> mono coefficient for each channel (no normalisation when
# mixing into float).
_SQRT1_2 = 0.7071067811865476


def _probe(container: av.container.InputContainer, max_seconds: float) -> ProbedAudio | None:
    """decode's figures read from the native frames, or None where only decode's own
    resampler can say what it would produce."""
    stream = next(iter(container.streams.audio), None)
    if stream is None:
        raise AudioError("undecodable_audio", "The file contains no audio track.")
    rate = int(stream.rate or stream.codec_context.sample_rate or 0)
    if not rate:
        return None  # decode would resample the frames to 16 kHz
    limit = int(max_seconds * rate) + 1
    template: tuple[str, str, int] | None = None
    planes: list[list[np.ndarray]] = []
    levels = _Levels()
    total = pending = 0
    for frame in container.decode(stream):
        shape = (frame.format.name, frame.layout.name, int(frame.sample_rate))
        if template is None:
            template = shape
            fmt = frame.format.name.removesuffix("p")
            channels = int(frame.layout.nb_channels)
            if (
                fmt not in _NATIVE_FORMATS
                or frame.sample_rate != rate
                or (frame.layout.name, channels) not in (("mono", 1), ("stereo", 2))
            ):
                return None
            dtype = np.dtype(_NATIVE_FORMATS[fmt][0])
            planar = frame.format.is_planar and channels > 1
            planes = [[] for _ in range(channels if planar else 1)]
        elif shape != template:
            return None  # decode's resampler refuses or passes such frames through
        n = frame.samples
        count = n if planar else n * channels
        # The planes' buffers are padded: read only the samples.
        for index, chunks in enumerate(planes):
            chunks.append(np.frombuffer(memoryview(frame.planes[index]), dtype=dtype, count=count))
        total += n
        pending += n
        if pending >= _BLOCK:
            # Long or high-rate uploads: reduce as we go, so memory stays bounded.
            levels.add(_mono(_take(planes), fmt, channels))
            pending = 0
        if total >= limit:
            break
    if template is not None:
        levels.add(_mono(_take(planes), fmt, channels))
    # Only once every frame is read, as decode does: a stream with bad values that is
    # also damaged further on must be refused with the damage's message, like decode.
    if not levels.valid:
        raise _invalid_samples()
    return ProbedAudio(
        n_samples=levels.count,
        peak=levels.peak,
        sample_rate=rate,
        source_channels=int(stream.codec_context.channels or 0),
        codec=stream.codec_context.name,
    )


# Samples per channel decoded before the probe reduces them to levels.
_BLOCK = 1 << 18


class _Levels:
    """What the checks need from decode's samples, accumulated block by block."""

    def __init__(self) -> None:
        self.count = 0
        self.peak = 0.0
        self.valid = True

    def add(self, mono: np.ndarray) -> None:
        self.count += len(mono)
        if mono.size:
            self.valid = self.valid and bool(np.all(np.isfinite(mono)))
            self.peak = max(self.peak, float(np.max(np.abs(mono))))
            self.valid = self.valid and self.peak <= MAX_PEAK


def _take(planes: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Each plane's pending chunks as one array, emptying them."""
    taken = [np.concatenate(chunks) for chunks in planes]
    for chunks in planes:
        chunks.clear()
    return taken


def _mono(planes: list[np.ndarray], fmt: str, channels: int) -> np.ndarray:
    """decode's mono float32 from native samples (one plane each, or one interleaved)."""
    _, offset, scale = _NATIVE_FORMATS[fmt]
    if len(planes) == 1 and channels > 1:
        packed = planes[0].reshape(-1, channels)
        columns = [packed[:, c] for c in range(channels)]
    else:
        columns = planes
    with np.errstate(over="ignore", invalid="ignore"):
        if fmt == "dbl":
            # Doubles are mixed as doubles and cast to float at the end (1e300 -> inf).
            if channels == 1:
                return columns[0].astype(np.float32)
            return (_SQRT1_2 * columns[0] + _SQRT1_2 * columns[1]).astype(np.float32)
        floats = [
            col.astype(np.float32)
            if scale is None
            else (col.astype(np.float32) - np.float32(offset)) * np.float32(scale)
            for col in columns
        ]
        if channels == 1:
            return floats[0]
        c = np.float32(_SQRT1_2)
        return c * floats[0] + c * floats[1]


def _refuse_invalid(samples: np.ndarray) -> None:
    if samples.size and not (
        np.all(np.isfinite(samples)) and float(np.max(np.abs(samples))) <= MAX_PEAK
    ):
        raise _invalid_samples()


def _invalid_samples() -> AudioError:
    return AudioError(
        "undecodable_audio",
        "The decoded audio contains invalid sample values (not numbers, or far beyond full scale).",
    )


def peak_dbfs(samples: np.ndarray) -> float:
    return _dbfs(float(np.max(np.abs(samples))) if samples.size else 0.0)


def _dbfs(peak: float) -> float:
    return -np.inf if peak <= 0 else 20.0 * float(np.log10(peak))


def check_usable(
    audio: DecodedAudio | ProbedAudio,
    min_duration_s: float,
    max_duration_s: float,
    silence_dbfs: float,
) -> None:
    """Raise :class:`AudioError` for audio the model cannot say anything useful about.

    The same checks, codes and messages for decoded samples (the worker) and for a
    :func:`probe` (the API), so the API refuses exactly what the worker would."""
    if isinstance(audio, ProbedAudio):
        size, level = audio.n_samples, _dbfs(audio.peak)
    else:
        size, level = audio.samples.size, peak_dbfs(audio.samples)
    if size == 0:
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
    if level < silence_dbfs:
        raise AudioError(
            "silent_audio",
            f"The recording is silent (peak level {level:.0f} dBFS); check the microphone.",
        )
