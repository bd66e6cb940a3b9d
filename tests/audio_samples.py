"""Real encoders (PyAV/FFmpeg) to turn a real recording into every upload format."""

from __future__ import annotations

import io
import struct
import wave

import av
import numpy as np

# container format, codec, sample rate, channels
FORMATS: dict[str, tuple[str, str, int, int]] = {
    "wav": ("wav", "pcm_s16le", 44100, 2),
    "mp3": ("mp3", "libmp3lame", 44100, 1),
    "flac": ("flac", "flac", 48000, 1),
    "ogg-opus": ("ogg", "libopus", 48000, 1),
    "webm-opus": ("webm", "libopus", 48000, 2),
    "m4a-aac": ("ipod", "aac", 44100, 1),
}


def encode(samples: np.ndarray, rate: int, kind: str) -> bytes:
    """Encode mono float32 ``samples`` at ``rate`` into the container ``kind``."""
    container_format, codec, out_rate, channels = FORMATS[kind]
    layout = "stereo" if channels == 2 else "mono"
    buf = io.BytesIO()
    with av.open(buf, "w", format=container_format) as out:
        stream = out.add_stream(codec, rate=out_rate, layout=layout)
        resampler = av.AudioResampler(
            format=stream.codec_context.codec.audio_formats[0].name, layout=layout, rate=out_rate
        )
        pcm = np.ascontiguousarray(samples, dtype=np.float32)[np.newaxis, :]
        frame = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
        frame.sample_rate = rate
        for resampled in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(resampled):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    """16-bit PCM WAV via the standard library (also for zero samples: a header-only file)."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buf.getvalue()


def noise(seconds: float, rate: int = 16000, level: float = 0.3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * rate)) * level).clip(-1, 1).astype(np.float32)


# --- WAV files built byte by byte, for the odd ones real recorders and attackers make ---


def riff_chunk(chunk_id: bytes, payload: bytes) -> bytes:
    """One RIFF chunk: id, little-endian size, payload, and the pad byte of odd sizes."""
    return (
        chunk_id + struct.pack("<I", len(payload)) + payload + (b"\0" if len(payload) % 2 else b"")
    )


def riff_wav(
    frames: bytes,
    rate: int,
    channels: int,
    bits: int = 16,
    fmt_tag: int = 1,
    extra_chunks: tuple[bytes, ...] = (),
) -> bytes:
    """A WAV of raw ``frames`` with its header written by hand (any rate, channel count
    or format tag, even impossible ones), ``extra_chunks`` between ``fmt `` and ``data``."""
    block = channels * bits // 8
    fmt = struct.pack(
        "<HHIIHH",
        fmt_tag,
        channels,
        rate & 0xFFFFFFFF,
        (rate * block) & 0xFFFFFFFF,
        block & 0xFFFF,
        bits,
    )
    body = b"WAVE" + riff_chunk(b"fmt ", fmt) + b"".join(extra_chunks) + riff_chunk(b"data", frames)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def float_wav(samples: np.ndarray, rate: int = 16000, bits: int = 32) -> bytes:
    """An IEEE float WAV (format tag 3) of mono ``samples``, unclipped: NaN and 1e38 too."""
    dtype = "<f4" if bits == 32 else "<f8"
    return riff_wav(np.asarray(samples).astype(dtype).tobytes(), rate, 1, bits, fmt_tag=3)


def pcm16_wav(samples: np.ndarray, rate: int = 16000, channels: int = 1) -> bytes:
    """16-bit PCM of mono ``samples`` copied to ``channels`` channels, header by hand."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    frames = np.repeat(pcm[:, np.newaxis], channels, axis=1).tobytes()
    return riff_wav(frames, rate, channels)


def info_chunk(**tags: bytes) -> bytes:
    """A ``LIST``/``INFO`` chunk; values are raw bytes (Latin-1 text, as real files hold)."""
    return riff_chunk(
        b"LIST", b"INFO" + b"".join(riff_chunk(k.encode(), v + b"\0") for k, v in tags.items())
    )


def id3_chunk(title: bytes) -> bytes:
    """An ``id3 `` chunk holding an ID3v2.3 tag with a Latin-1 title (TIT2) frame."""
    frame = b"TIT2" + struct.pack(">I", len(title) + 1) + b"\0\0" + b"\0" + title
    size = len(frame)
    syncsafe = bytes([(size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F])
    return riff_chunk(b"id3 ", b"ID3\x03\x00\x00" + syncsafe + frame)
