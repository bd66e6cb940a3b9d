"""The API's probe refuses exactly what the worker's decode + check_usable refuses.

The API checks every upload with ``shared.audio.probe`` (no resampling) while the
worker decodes with ``decode``: if they disagreed, the API would accept uploads the
worker then fails, or refuse recordings it could analyse. Each input goes through
both; the codes and messages must match, and for accepted audio the length (exactly,
and within one frame for real recordings) and the peak the silence check reads."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from shared.audio import AudioError, DecodedAudio, ProbedAudio, check_usable, decode, probe
from tests.audio_samples import FORMATS, encode, float_wav, noise, pcm16_wav, riff_wav, wav

# The API's defaults; probe and decode get max_duration_s + 1, as api/intake.py does.
LIMITS = {"min_duration_s": 0.3, "max_duration_s": 120.0, "silence_dbfs": -60.0}
MAX_SECONDS = LIMITS["max_duration_s"] + 1


def outcome(audio: DecodedAudio | ProbedAudio) -> tuple[str, str]:
    try:
        check_usable(audio, **LIMITS)
    except AudioError as exc:
        return exc.code, exc.message
    return "ok", ""


def both(
    data: bytes,
) -> tuple[tuple[str, str], tuple[str, str], DecodedAudio | None, ProbedAudio | None]:
    """(code, message) of decode + check_usable and of probe + check_usable, and what each
    returned when it did."""
    decoded = probed = None
    try:
        decoded = decode(data, max_seconds=MAX_SECONDS)
        by_decode = outcome(decoded)
    except AudioError as exc:
        by_decode = (exc.code, exc.message)
    try:
        probed = probe(data, max_seconds=MAX_SECONDS)
        by_probe = outcome(probed)
    except AudioError as exc:
        by_probe = (exc.code, exc.message)
    return by_decode, by_probe, decoded, probed


def assert_agree(data: bytes) -> str:
    by_decode, by_probe, decoded, probed = both(data)
    assert by_probe == by_decode
    if decoded is not None and probed is not None:
        # The same figures check_usable reads, bit for bit: the same arithmetic as
        # libswresample, so even a recording right at a limit gets the same answer.
        assert probed.n_samples == len(decoded.samples)
        assert probed.sample_rate == decoded.sample_rate
        peak = float(np.max(np.abs(decoded.samples))) if decoded.samples.size else 0.0
        assert probed.peak == peak or (np.isnan(peak) and np.isnan(probed.peak))
    return by_decode[0]


def flip_bits(rng: random.Random, data: bytes, count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def int_wav(samples: np.ndarray, bits: int, channels: int = 1, rate: int = 16000) -> bytes:
    """Integer PCM WAV of 8 (unsigned), 24 or 32 bits, the mono ``samples`` copied."""
    full = float(2 ** (bits - 1) - 1)
    ints = np.repeat((np.clip(samples, -1, 1) * full).astype(np.int64)[:, None], channels, axis=1)
    if bits == 8:
        frames = (ints + 128).astype("u1").tobytes()
    elif bits == 24:
        frames = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints.reshape(-1))
    else:
        frames = ints.astype("<i4").tobytes()
    return riff_wav(frames, rate, channels, bits)


def odd_inputs() -> Iterator[tuple[str, bytes]]:
    sound = noise(1.5)
    for kind in sorted(FORMATS):
        yield kind, encode(sound, 16000, kind)
        yield f"{kind}-quiet", encode(sound * 0.002, 16000, kind)
    for channels in (1, 2, 3, 6, 8):
        yield f"pcm16-{channels}ch", pcm16_wav(sound, channels=channels)
    for bits in (8, 24, 32):
        for channels in (1, 2):
            yield f"pcm{bits}-{channels}ch", int_wav(sound, bits, channels)
    stereo = np.repeat(sound[:, None], 2, axis=1)
    yield "float32-stereo", riff_wav(stereo.astype("<f4").tobytes(), 16000, 2, 32, fmt_tag=3)
    yield (
        "float64-stereo-1e300",
        riff_wav((stereo.astype(np.float64) * 1e300).tobytes(), 16000, 2, 64, fmt_tag=3),
    )
    yield (
        "float32-stereo-3e38",
        riff_wav((stereo * 3e38).astype("<f4").tobytes(), 16000, 2, 32, fmt_tag=3),
    )
    # tests/api/test_hostile_input.py's impossible sample values, and the limits around them
    yield "nan", float_wav(np.full(16000, np.nan))
    yield "inf", float_wav(np.where(np.arange(16000) % 100 == 0, np.inf, 0.1))
    yield "1e38", float_wav(sound * 1e38)
    yield "float64-1e300", float_wav(sound.astype(np.float64) * 1e300, bits=64)
    yield "1e5", float_wav(sound * 1e5)
    yield "loud-1.5", float_wav(sound * 1.5)
    yield "peak-exactly-16", float_wav(sound * np.float32(16.0) / np.abs(sound).max())
    yield "peak-just-over-16", float_wav(sound * np.float32(16.01) / np.abs(sound).max())
    late_nan = noise(100.0, rate=48000)
    late_nan[-3] = np.nan  # past the probe's first blocks
    yield "nan-at-the-end-of-100s", float_wav(late_nan, rate=48000)
    # empty, short, long, silent
    yield "empty", b""
    yield "header-only", wav(np.zeros(0, np.float32))
    yield "too-short", pcm16_wav(noise(0.2))
    yield "just-long-enough", pcm16_wav(noise(0.3))
    yield "silent", pcm16_wav(np.zeros(16000, np.float32))
    yield "near-silence", pcm16_wav(sound * 0.0009)
    yield "silent-flac", encode(np.zeros(48000 * 3, np.float32), 48000, "flac")
    yield "too-long", pcm16_wav(noise(130.0, rate=8000), rate=8000)
    yield "long-stereo-48k", pcm16_wav(noise(119.9, rate=48000), rate=48000, channels=2)
    # odd headers (tests/api/test_fuzz.py's sample rates and channel counts)
    for rate in (0, 1, 7, 100, 4000, 11025, 96000, 384000, 2**31 - 1, 2**32 - 1):
        yield f"rate-{rate}", pcm16_wav(noise(1.0), rate=rate)
    for channels in (0, 16, 64, 255, 65535):
        frames = (noise(0.5) * 32767).astype("<i2").tobytes() * max(1, min(channels, 64))
        yield f"channels-{channels}", riff_wav(frames, 16000, channels)
    # damaged files and noise (seeded)
    rng = random.Random(20261203)
    for kind in sorted(FORMATS):
        data = encode(sound, 16000, kind)
        for i in range(6):
            yield f"{kind}-truncated-{i}", data[: rng.randrange(1, len(data))]
            yield f"{kind}-flipped-{i}", flip_bits(rng, data, rng.randint(1, 64))
    for i in range(20):
        yield f"random-{i}", rng.randbytes(rng.choice([1, 4, 44, 100, 1000, 10_000]))


def test_probe_and_decode_agree_on_hostile_and_odd_input() -> None:
    codes: dict[str, str] = {}
    for name, data in odd_inputs():
        try:
            codes[name] = assert_agree(data)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
    # The corpus covers every refusal, and valid files of every shape.
    assert set(codes.values()) == {
        "ok", "empty_audio", "undecodable_audio", "audio_too_short", "audio_too_long",
        "silent_audio",
    }  # fmt: skip
    assert codes["nan"] == codes["peak-just-over-16"] == "undecodable_audio"
    assert codes["peak-exactly-16"] == codes["pcm24-2ch"] == codes["webm-opus"] == "ok"


def test_probe_and_decode_agree_on_real_recordings(
    cough_files: list[Path], damaged_file: Path
) -> None:
    assert_agree(damaged_file.read_bytes())
    accepted = 0
    for path in cough_files[:120]:
        data = path.read_bytes()
        by_decode, by_probe, decoded, probed = both(data)
        assert by_probe == by_decode, path.name
        if decoded is not None and probed is not None:
            # Within one frame (one MP3 frame is at most 1152 samples); in practice equal.
            assert abs(probed.duration_s - decoded.duration_s) <= 1152 / decoded.sample_rate
            assert probed.n_samples == len(decoded.samples), path.name
            accepted += by_probe[0] == "ok"
    assert accepted > 100


def test_probe_reads_no_more_than_max_seconds() -> None:
    """Like decode, the probe stops just past ``max_seconds``: a tiny file that claims
    hours cannot make it read them all."""
    data = pcm16_wav(noise(10.0, rate=8000), rate=8000)
    probed = probe(data, max_seconds=2.0)
    assert probed.n_samples == len(decode(data, max_seconds=2.0).samples)
    assert 2.0 < probed.duration_s < 10.0


@pytest.mark.parametrize("data", [b"", b"not audio at all"], ids=["empty", "garbage"])
def test_probe_raises_decode_s_errors(data: bytes) -> None:
    with pytest.raises(AudioError) as by_decode:
        decode(data)
    with pytest.raises(AudioError) as by_probe:
        probe(data)
    assert (by_probe.value.code, by_probe.value.message) == (
        by_decode.value.code,
        by_decode.value.message,
    )
