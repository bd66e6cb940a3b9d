"""Recordings that are not coughs, for training and testing the cough gate:
synthetic speech (espeak-ng), music, noise, hum, tones and near-silent room
tone. Each kind is generated from a seed, so the gate's training negatives
and the tests' negatives can be different clips of the same kinds."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

RATE = 16000
SENTENCES = [
    "Please describe how you have been feeling over the last few days.",
    "The weather today is mild with a light breeze from the west.",
    "Turn left at the second junction and follow the signs to the station.",
    "I would like to book an appointment for next Tuesday morning.",
    "Numbers one two three four five six seven eight nine ten.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Can you hear me clearly, or should I move closer to the microphone?",
    "Our meeting has been moved to the large room on the third floor.",
    "Guten Morgen, wie geht es Ihnen heute?",
    "Bonjour, je voudrais parler avec le médecin, s'il vous plaît.",
    "Buenos días, ¿cómo está usted esta mañana?",
    "Здравствуйте, я хочу записаться на приём к врачу.",
]
VOICES = ["en", "en-us", "en-gb-x-rp", "de", "fr", "es", "ru", "it", "pt"]


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


def _normalise(x: np.ndarray, peak: float) -> np.ndarray:
    return (x / max(1e-9, float(np.max(np.abs(x)))) * peak).astype(np.float32)


def speech(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """espeak-ng speaking a sentence; raises if espeak-ng is not installed."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    text = SENTENCES[int(rng.integers(len(SENTENCES)))]
    voice = VOICES[int(rng.integers(len(VOICES)))]
    variant = f"{voice}+{['m1', 'm3', 'f1', 'f2', 'f4'][int(rng.integers(5))]}"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.wav"
        subprocess.run(
            [
                exe,
                "-v",
                variant,
                "-s",
                str(int(rng.integers(120, 200))),
                "-p",
                str(int(rng.integers(20, 80))),
                "-w",
                str(out),
                text,
            ],
            check=True,
            capture_output=True,
        )
        from shared.audio import decode

        samples = decode(out.read_bytes(), RATE).samples
    return _normalise(samples[: int(seconds * RATE)], float(rng.uniform(0.2, 0.9)))


def music(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Chords and a melody of harmonic notes with soft attacks."""
    t = np.arange(int(seconds * RATE)) / RATE
    out = np.zeros_like(t)
    note_len = float(rng.uniform(0.25, 0.8))
    root = 220.0 * 2 ** (int(rng.integers(-5, 7)) / 12)
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    for start in np.arange(0, seconds, note_len):
        idx = (t >= start) & (t < start + note_len * 1.5)
        tt = t[idx] - start
        envelope = np.minimum(1.0, tt / 0.05) * np.exp(-tt * float(rng.uniform(0.5, 3)))
        for semitone in (scale[int(rng.integers(len(scale)))], 0, 7):
            f = root * 2 ** (semitone / 12)
            for h in range(1, 5):
                out[idx] += envelope * np.sin(2 * np.pi * f * h * tt) / h**1.5
    return _normalise(out, float(rng.uniform(0.2, 0.8)))


def coloured_noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    n = int(seconds * RATE)
    white = rng.standard_normal(n)
    exponent = float(rng.choice([0.0, 1.0, 2.0]))  # white, pink, brown
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[1:] /= freqs[1:] ** (exponent / 2)
    return _normalise(np.fft.irfft(spectrum, n), float(rng.uniform(0.05, 0.7)))


def hum(rng: np.random.Generator, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    base = float(rng.choice([50.0, 60.0, 100.0, 120.0]))
    x = sum(np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6)) / k for k in range(1, 8))
    x = x + rng.standard_normal(len(t)) * 0.05
    return _normalise(x, float(rng.uniform(0.05, 0.5)))


def tones(rng: np.random.Generator, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    if rng.random() < 0.5:  # a sweep
        f0, f1 = sorted(rng.uniform(200, 4000, 2))
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
        x = np.sin(phase)
    else:  # beeps
        x = np.sin(2 * np.pi * float(rng.uniform(400, 3000)) * t)
        x *= (np.floor(t * float(rng.uniform(1, 4))) % 2) == 0
    return _normalise(x, float(rng.uniform(0.1, 0.8)))


def room_tone(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Near silence just above the API's silence floor: a microphone left open."""
    x = coloured_noise(rng, seconds)
    return _normalise(x, float(10 ** (rng.uniform(-55, -35) / 20)))


def speech_in_noise(rng: np.random.Generator, seconds: float) -> np.ndarray:
    s = speech(rng, seconds)
    n = coloured_noise(rng, len(s) / RATE) * float(rng.uniform(0.05, 0.4))
    if len(n) < len(s):  # rounding of the length in seconds can cost one sample
        n = np.pad(n, (0, len(s) - len(n)))
    return _normalise(s + n[: len(s)], float(rng.uniform(0.3, 0.9)))


def _events(
    rng: np.random.Generator,
    seconds: float,
    event: Callable[[], np.ndarray],
    gaps: tuple[float, float],
) -> np.ndarray:
    """Short events one after another (a few knocks, a round of claps) in faint room tone."""
    n = int(seconds * RATE)
    x = coloured_noise(rng, seconds)[:n] * float(10 ** (rng.uniform(-60, -45) / 20))
    t = float(rng.uniform(0.05, 0.5))
    while t < seconds - 0.1:
        e = event() * float(rng.uniform(0.5, 1.0))
        i = int(t * RATE)
        x[i : i + len(e)] += e[: max(0, n - i)]
        t += float(rng.uniform(*gaps))
    return _normalise(x, float(rng.uniform(0.2, 0.9)))


def knocks(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Knuckles on a door or a table: a click and a few damped low resonances."""
    modes = rng.uniform(70, 700, size=int(rng.integers(2, 5)))
    decay = float(rng.uniform(0.01, 0.05))

    def knock() -> np.ndarray:
        t = np.arange(int(0.25 * RATE)) / RATE
        body = sum(
            np.sin(2 * np.pi * f * (1 + rng.uniform(-0.03, 0.03)) * t) * rng.uniform(0.3, 1.0)
            for f in modes
        )
        click = rng.standard_normal(len(t)) * np.exp(-t / 0.0015) * float(rng.uniform(0.2, 1.0))
        return ((body + click) * np.exp(-t / decay)).astype(np.float32)

    return _events(rng, seconds, knock, (0.12, 0.45))


def claps(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Hand claps: sharp broadband bursts with a hollow resonance around 1-2 kHz."""
    import scipy.signal as sps

    centre = float(rng.uniform(800, 2200))
    sos = sps.butter(
        2, [centre / 2.5, min(centre * 2.5, 7900)], btype="band", fs=RATE, output="sos"
    )
    decay = float(rng.uniform(0.004, 0.02))

    def clap() -> np.ndarray:
        t = np.arange(int(0.12 * RATE)) / RATE
        burst = rng.standard_normal(len(t)) * np.exp(-t / decay)
        return sps.sosfilt(sos, burst).astype(np.float32)

    return _events(rng, seconds, clap, (0.15, 0.6))


KINDS: dict[str, Callable[[np.random.Generator, float], np.ndarray]] = {
    "speech": speech,
    "speech_in_noise": speech_in_noise,
    "music": music,
    "noise": coloured_noise,
    "hum": hum,
    "tones": tones,
    "room_tone": room_tone,
    # Added later: kinds keep their index, so older kinds' clips stay the same.
    "knocks": knocks,
    "claps": claps,
}


def generate(
    seed: int, per_kind: int, kinds: list[str] | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """(name, 16 kHz samples) for ``per_kind`` clips of each kind."""
    for kind in kinds or list(KINDS):
        rng = np.random.default_rng([seed, list(KINDS).index(kind)])
        for i in range(per_kind):
            seconds = float(rng.uniform(1.0, 6.0))
            yield f"{kind}-{seed}-{i:03d}", KINDS[kind](rng, seconds)


def write_negatives(out_dir: Path, seed: int, per_kind: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, samples in generate(seed, per_kind):
        path = out_dir / f"{name}.wav"
        write_wav(path, samples)
        paths.append(path)
    return paths
