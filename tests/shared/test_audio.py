"""Decoding every upload format with PyAV, and the checks that reject bad audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.audio import AudioError, check_usable, decode, peak_dbfs
from tests.audio_samples import FORMATS, encode, noise, wav

LIMITS = {"min_duration_s": 0.3, "max_duration_s": 120.0, "silence_dbfs": -60.0}


@pytest.fixture(scope="module")
def real_cough(cough_file: Path) -> np.ndarray:
    return decode(cough_file.read_bytes(), 16000).samples


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_every_upload_format_decodes_to_the_same_mono_16k_audio(
    kind: str, real_cough: np.ndarray
) -> None:
    data = encode(real_cough, 16000, kind)
    audio = decode(data, 16000)
    assert audio.sample_rate == 16000
    assert audio.samples.ndim == 1 and audio.samples.dtype == np.float32
    # Lossy codecs add padding and change samples, but the length and loudness hold.
    assert abs(audio.duration_s - len(real_cough) / 16000) < 0.12
    assert abs(peak_dbfs(audio.samples) - peak_dbfs(real_cough)) < 3.0
    check_usable(audio, **LIMITS)


def test_decode_resamples_and_downmixes(real_cough: np.ndarray) -> None:
    data = encode(real_cough, 16000, "wav")  # stored as 44.1 kHz stereo
    audio = decode(data, 22050)
    assert audio.source_sample_rate == 44100
    assert audio.source_channels == 2
    assert audio.sample_rate == 22050
    assert abs(len(audio.samples) - len(real_cough) * 22050 / 16000) < 400


def test_decode_keeps_the_source_rate_when_none_is_asked(real_cough: np.ndarray) -> None:
    audio = decode(encode(real_cough, 16000, "flac"), None)
    assert audio.sample_rate == 48000


def _code(data: bytes) -> str:
    with pytest.raises(AudioError) as info:
        check_usable(decode(data, 16000), **LIMITS)
    assert info.value.message and info.value.message[-1] == "."
    return info.value.code


def test_the_damaged_recording_in_the_data_set_is_undecodable(damaged_file: Path) -> None:
    assert _code(damaged_file.read_bytes()) == "undecodable_audio"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_audio"),
        (b"this is not audio at all" * 50, "undecodable_audio"),
        (bytes(range(256)) * 40, "undecodable_audio"),
    ],
)
def test_garbage_is_rejected(data: bytes, code: str) -> None:
    assert _code(data) == code


def test_header_only_wav_is_empty() -> None:
    assert _code(wav(np.zeros(0, np.float32))) == "empty_audio"


def test_truncated_wav_still_decodes_what_is_there(real_cough: np.ndarray) -> None:
    data = wav(real_cough)
    audio = decode(data[: len(data) // 2], 16000)
    assert 0 < audio.duration_s < len(real_cough) / 16000


def test_too_short() -> None:
    assert _code(wav(noise(0.2))) == "audio_too_short"


def test_too_long_stops_decoding_early() -> None:
    data = wav(noise(3.0))
    audio = decode(data, 16000, max_seconds=1.0)
    assert audio.duration_s < 1.2
    with pytest.raises(AudioError) as info:
        check_usable(audio, min_duration_s=0.3, max_duration_s=0.5, silence_dbfs=-60)
    assert info.value.code == "audio_too_long"


def test_silence_and_near_silence() -> None:
    assert _code(wav(np.zeros(16000, np.float32))) == "silent_audio"
    assert _code(wav(noise(1.0, level=0.0001))) == "silent_audio"
    check_usable(decode(wav(noise(1.0, level=0.01)), 16000), **LIMITS)


def test_a_video_without_audio_has_no_audio_track() -> None:
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="matroska") as out:
        stream = out.add_stream("ffv1", rate=5)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(
                np.full((16, 16, 3), i * 40, np.uint8), format="rgb24"
            )
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(AudioError) as info:
        decode(buf.getvalue(), 16000)
    assert info.value.code == "undecodable_audio"
    assert "no audio track" in info.value.message
