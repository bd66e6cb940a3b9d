"""Real encoders (PyAV/FFmpeg) to turn a real recording into every upload format."""

from __future__ import annotations

import io
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
