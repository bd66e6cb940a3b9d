"""The audio of long recordings, read and written in pieces: never whole in memory.

- :class:`PartsReader` reads a stored upload (one or more parts in the recording
  store, as a resumable upload leaves them) as one seekable file, by ranged reads
  of at least :data:`READ_AHEAD` bytes (so PyAV's small reads are not each a
  request to S3).
- :func:`measure` finds a recording's duration from its container's packets,
  without decoding them, stopping as soon as it is past the limit: the API runs it
  on the upload while it streams (``TUSSIS_MAX_RECORDING_S``).
- :func:`wav_pcm` recognises an upload that already is what the segments read
  (16 kHz mono 16-bit PCM WAV): its data chunk is used in place.
- :func:`transcode` is the one decoding pass of any other upload: 16 kHz mono
  16-bit PCM written as it is decoded (docs/long-recordings.md says why this, and
  not a seek in the container per segment).
- :func:`read_samples` reads any span of that PCM as float32 (a segment's windows,
  or the clip the API plays back), and :func:`wav_file` wraps PCM as a WAV.
"""

from __future__ import annotations

import io
import struct
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from shared.audio import AudioError
from shared.storage import AudioStorage, StreamWriter

SAMPLE_RATE = 16000
SAMPLE_BYTES = 2  # s16
READ_AHEAD = 1024 * 1024
# PCM written per storage write while transcoding (about 33 s of audio).
_WRITE_BYTES = 1024 * 1024

_NOT_AUDIO = (
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


class PartsReader(io.RawIOBase):
    """``[[key, size], ...]`` of ``storage`` read as one seekable binary file."""

    def __init__(self, storage: AudioStorage, parts: Iterable[Any]) -> None:
        super().__init__()
        self._storage = storage
        self._parts = [(str(key), int(size)) for key, size in parts]
        self._starts: list[int] = []
        total = 0
        for _, size in self._parts:
            self._starts.append(total)
            total += size
        self.length = total
        self._pos = 0
        self._cache_start = 0
        self._cache = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _fetch(self, pos: int, want: int) -> bytes:
        """Up to ``want`` bytes at ``pos``, from the one part that holds ``pos``."""
        for (key, size), start in zip(self._parts, self._starts, strict=True):
            if start <= pos < start + size:
                return self._storage.read_range(key, pos - start, min(want, start + size - pos))
        return b""

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self.length - self._pos
        out = bytearray()
        while size > 0 and self._pos < self.length:
            offset = self._pos - self._cache_start
            if not 0 <= offset < len(self._cache):
                self._cache_start = self._pos
                self._cache = self._fetch(self._pos, max(size, READ_AHEAD))
                offset = 0
                if not self._cache:
                    break
            piece = self._cache[offset : offset + size]
            out += piece
            self._pos += len(piece)
            size -= len(piece)
        return bytes(out)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class StreamReader(io.RawIOBase):
    """A non-seekable file over an iterator of byte chunks (an upload as it arrives)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._pending) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._pending += chunk
        if size < 0:
            size = len(self._pending)
        out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        """Read what is left, so everything passes through (the upload is stored whole)."""
        self._pending = b""
        for _ in self._chunks:
            pass


def too_long(max_s: float) -> AudioError:
    return AudioError(
        "audio_too_long",
        f"The recording lasts more than {max_s:g} s, the longest accepted "
        "(TUSSIS_MAX_RECORDING_S); split it and send the parts.",
    )


def _undecodable() -> AudioError:
    return AudioError(
        "undecodable_audio", "The file could not be read as audio (unknown or damaged format)."
    )


def measure(source: io.RawIOBase, max_s: float) -> float:
    """The duration of the first audio stream, from its packets' times (no decoding);
    raises ``audio_too_long`` as soon as a packet ends past ``max_s``."""
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except _NOT_AUDIO as exc:
        raise _undecodable() from exc
    try:
        with container:
            stream = next(iter(container.streams.audio), None)
            if stream is None:
                raise AudioError("undecodable_audio", "The file contains no audio track.")
            base = stream.time_base or Fraction(1, int(stream.rate or 1))
            end = 0.0
            summed = 0.0
            for packet in container.demux(stream):
                if packet.duration:
                    summed += float(packet.duration * base)
                if packet.pts is not None and packet.duration:
                    end = max(end, float((packet.pts + packet.duration) * base))
                if max(end, summed) > max_s:
                    raise too_long(max_s)
            duration = max(end, summed)
    except AudioError:
        raise
    except _NOT_AUDIO as exc:
        raise AudioError(
            "undecodable_audio", "The audio stream is damaged and could not be read."
        ) from exc
    if duration <= 0:
        raise AudioError("empty_audio", "The file decodes to no audio samples at all.")
    return duration


@dataclass(frozen=True)
class Pcm:
    """Where a recording's 16 kHz mono s16 samples are: from byte ``offset`` of ``parts``
    (``[[key, bytes], ...]`` read as one file: the upload itself, or its transcode)."""

    parts: list[list[Any]]
    offset: int
    samples: int

    @property
    def duration_s(self) -> float:
        return self.samples / SAMPLE_RATE


def wav_pcm(reader: PartsReader) -> tuple[int, int] | None:
    """``(data offset, data bytes)`` when the upload is a 16 kHz mono 16-bit PCM WAV
    (what segments read, used in place, whatever parts it arrived in); None otherwise."""
    reader.seek(0)
    header = reader.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return None
    pos, fmt_ok = 12, False
    while pos + 8 <= reader.length:
        reader.seek(pos)
        chunk = reader.read(8)
        if len(chunk) < 8:
            return None
        name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if name == b"fmt ":
            fmt = reader.read(min(size, 16))
            if len(fmt) < 16:
                return None
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt)
            fmt_ok = tag == 1 and channels == 1 and rate == SAMPLE_RATE and bits == 16
        elif name == b"data":
            if not fmt_ok:
                return None
            start = pos + 8
            # Streaming writers leave the size 0 or 0xFFFFFFFF: the file's end decides.
            available = reader.length - start
            length = available if size in (0, 0xFFFFFFFF) else min(size, available)
            return start, length - length % SAMPLE_BYTES
        pos += 8 + size + (size & 1)
    return None


def transcode(reader: PartsReader, writer: StreamWriter, max_s: float) -> int:
    """Decode the upload into 16 kHz mono s16 PCM through ``writer`` (not committed);
    returns the number of samples. ``audio_too_long`` past ``max_s``."""
    limit = int(max_s * SAMPLE_RATE)
    reader.seek(0)
    try:
        container = av.open(reader, mode="r", metadata_errors="ignore")
    except _NOT_AUDIO as exc:
        raise _undecodable() from exc
    samples = 0
    pending = bytearray()
    try:
        with container:
            stream = next(iter(container.streams.audio), None)
            if stream is None:
                raise AudioError("undecodable_audio", "The file contains no audio track.")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)

            def take(frames: list[Any]) -> None:
                nonlocal samples
                for out in frames:
                    data = out.to_ndarray().reshape(-1).astype("<i2", copy=False).tobytes()
                    pending.extend(data)
                    samples += len(data) // SAMPLE_BYTES
                if samples > limit:
                    raise too_long(max_s)
                while len(pending) >= _WRITE_BYTES:
                    writer.write(bytes(pending[:_WRITE_BYTES]))
                    del pending[:_WRITE_BYTES]

            for frame in container.decode(stream):
                take(resampler.resample(frame))
            take(resampler.resample(None))
    except AudioError:
        raise
    except _NOT_AUDIO as exc:
        raise AudioError(
            "undecodable_audio", "The audio stream is damaged and could not be decoded."
        ) from exc
    if pending:
        writer.write(bytes(pending))
    if samples == 0:
        raise AudioError("empty_audio", "The file decodes to no audio samples at all.")
    return samples


def read_pcm(storage: AudioStorage, pcm: Pcm, start: int, count: int) -> bytes:
    """The s16 bytes of samples ``[start, start + count)`` (fewer at the end): ranged
    reads of the parts that hold them, nothing else."""
    start = max(0, min(start, pcm.samples))
    count = max(0, min(count, pcm.samples - start))
    reader = PartsReader(storage, pcm.parts)
    reader.seek(pcm.offset + start * SAMPLE_BYTES)
    return reader.read(count * SAMPLE_BYTES)


def read_samples(storage: AudioStorage, pcm: Pcm, start: int, count: int) -> np.ndarray:
    """Samples ``[start, start + count)`` as float32 in [-1, 1] (one ranged read)."""
    data = read_pcm(storage, pcm, start, count)
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def wav_file(pcm_bytes: bytes) -> bytes:
    """16 kHz mono s16 PCM as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(SAMPLE_BYTES)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm_bytes)
    return out.getvalue()
