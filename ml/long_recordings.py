"""``tussis make-long-recordings``: long recordings with coughs at known times, to
measure cough counting (``tussis evaluate-counting``, ``ml.counting``).

No openly licensed, annotated long recording exists here, so they are built as
cough-monitoring research builds them (``shared/docs/cough-monitoring.md``): real
coughs placed at known times among real non-cough sounds over a real background,
the annotation written as they are placed.

- **Coughs**: ``../shared/data/covid19-cough`` (CC0) and Coswara's (CC BY 4.0,
  gathered by ``tussis gate-data``), each cut to its active part (the 10 ms frames
  within ``ACTIVE_DB`` of its loudest, plus ``PAD_S``), at a peak level drawn from
  ``COUGH_PEAK_DBFS``. Each cough recording is one *placement*; its annotated
  events are its runs of active frames (gaps shorter than ``JOIN_S`` joined), so a
  recording of three coughs gives three events and, by the 2 s rule, usually one
  episode.
- **Other sounds**: every non-cough category ``tussis gate-data`` gathers from
  sources whose licence allows training (CC0, CC BY, MIT), synthetic clips never;
  a category is drawn uniformly, then one of its recordings, at a peak level drawn
  from ``OTHER_PEAK_DBFS``, about ``OTHER_PER_HOUR`` an hour. With
  ``--with-evaluation-only``, the evaluation-only sources (ESC-50's non-commercial
  part, DCASE2016) join them: only ever for a set that is reported, never chosen on.
- **Background**: one real noise recording per long recording (room noise, a
  running tap, dishes, rain, the sea, a street...), looped with cross-fades at an RMS
  level drawn from ``BACKGROUND_DBFS``, over faint pink room tone (no digital
  silence anywhere). Recordings of these categories are never placed as other sounds.
- **Split**: only recordings of the chosen split (``ml.cough_gate.split_of``, the
  gate's own split) are used, so the validation set (the counting threshold is
  chosen on it) and the test set (reported) share no recording, and neither holds
  a recording the gate was trained on. Backgrounds are few and are used whatever
  their split.
- **Cough rates** differ between long recordings (``COUGHS_PER_HOUR``, in turn), so
  hourly rates can be compared.
- **Channel** (``CHANNELS``): a real night is recorded by one device, so every sound
  of it went through one channel. ``mixed`` (the first sets) places coughs as they
  were recorded, 8 kHz phone-line coughs among wideband sounds: no real recording
  mixes channels so, and it is harsh on purpose. ``phone`` passes the whole
  recording, coughs, other sounds, background and room tone alike, through the
  8 kHz phone line of ``ml.conditions.phone_band``. ``wideband`` places only the
  coughs that were recorded wideband (their active part's median window reaches
  above 4 kHz, ``ml.bandwidth``: the covid19-cough call-center recordings do not).
  Everything else (densities, levels, categories) is the same for every channel.

Each long recording is ``NAME.wav`` (16 kHz, 16-bit mono) with ``NAME.csv``
(``start_s,end_s`` of each cough event) and ``NAME.placed.csv`` (everything placed:
kind, category, source, file, start, end), and ``SET.json`` says how it was made.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml import bandwidth, conditions, events
from ml.cough_gate import Clip, read_coughs, read_labelled, split_of
from ml.counting import Span, write_annotation
from ml.gate_data import EVAL_ONLY_PREFIX, RECORD
from ml.negatives import write_wav
from shared.audio import AudioError, decode

RATE = events.SAMPLE_RATE
ACTIVE_DB = 30.0  # a cough's active frames are within this of its loudest
JOIN_S = 0.15  # active runs closer than this are one cough
MIN_EVENT_S = 0.05
PAD_S = 0.1
FADE_S = 0.02
GUARD_S = 0.5  # silence kept between any two placed sounds
COUGH_PEAK_DBFS = (-32.0, -6.0)
OTHER_PEAK_DBFS = (-32.0, -3.0)
BACKGROUND_DBFS = (-60.0, -40.0)
ROOM_TONE_RMS = conditions.ROOM_NOISE_RMS
OTHER_PER_HOUR = 120.0
COUGHS_PER_HOUR = (0.0, 6.0, 15.0, 30.0, 60.0, 120.0)
CHANNELS = ("mixed", "phone", "wideband")
MAX_OTHER_S = 20.0  # longer non-cough recordings are cut to a random part this long
# Background recordings: real, steady noise (not IBM's "street and nature" samples,
# which hold gunshots and birds), not synthetic (Speech Commands' white and pink
# noise files are generated, and left out).
BACKGROUND_CATEGORIES = ("room noise", "rain", "sea waves", "crackling fire")
SYNTHETIC_NOISE = ("white_noise.wav", "pink_noise.wav")
# The sneeze detector's "noise" files were recorded around people: YAMNet hears a
# cough in a quarter of them, so they cannot be a background whose every detection
# is a false positive.
NOT_BACKGROUNDS = ("sneeze-detector",)


@dataclass(frozen=True)
class Placed:
    kind: str  # cough, other, background
    category: str
    source: str
    file: str
    start_s: float
    end_s: float


def active_runs(samples: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` sample spans of the active parts (see the module docstring)."""
    db = events.frame_db(samples)
    hop = round(events.FRAME_S * RATE)
    if len(db) == 0:
        return []
    loud = db >= float(db.max()) - ACTIVE_DB
    spans: list[list[int]] = []
    for first, last in events.runs(loud):
        if spans and (first - spans[-1][1]) * hop < JOIN_S * RATE:
            spans[-1][1] = last + 1
        else:
            spans.append([first, last + 1])
    return [(a * hop, b * hop) for a, b in spans if (b - a) * hop >= MIN_EVENT_S * RATE]


def _load(clip: Clip) -> np.ndarray | None:
    try:
        return decode(clip.path.read_bytes(), RATE, max_seconds=121).samples
    except AudioError:
        return None


def _fade(x: np.ndarray) -> np.ndarray:
    n = min(len(x) // 2, int(FADE_S * RATE))
    if n:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        x = x.copy()
        x[:n] *= ramp
        x[-n:] *= ramp[::-1]
    return x


def _at_peak(x: np.ndarray, peak_dbfs: float) -> np.ndarray:
    peak = float(np.max(np.abs(x))) or 1.0
    return (x / peak * 10 ** (peak_dbfs / 20)).astype(np.float32)


def _background(x: np.ndarray, n: int, rms_dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """``x`` looped to ``n`` samples (from a random point in it, with 0.5 s linear
    cross-fades), at an RMS level."""
    fade = min(int(0.5 * RATE), len(x) // 4)
    ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
    out = np.zeros(n, np.float32)
    piece = x[int(rng.integers(0, max(1, len(x) - fade))) :]
    at = 0
    while at < n:
        part = piece[: n - at].astype(np.float32, copy=True)
        if fade and len(part) > 2 * fade:
            if at:
                part[:fade] *= ramp
            part[-fade:] *= ramp[::-1]
        out[at : at + len(part)] += part
        at += max(1, len(part) - fade)
        piece = x
    rms = float(np.sqrt(np.mean(out.astype(np.float64) ** 2))) or 1.0
    return (out / rms * 10 ** (rms_dbfs / 20)).astype(np.float32)


def _draw_cough(
    coughs: Sequence[Clip],
    samples: Callable[[Clip], np.ndarray | None],
    rng: np.random.Generator,
    narrow: set[str] | None,
) -> tuple[Clip, np.ndarray, list[tuple[int, int]]] | None:
    """A cough recording drawn at random, cut to its active part, with its active
    runs (relative to the cut); with ``narrow`` (a wideband night), drawn again
    while the drawn one is band-limited (remembered in ``narrow``). None when the
    draw is unusable."""
    for _ in range(100):
        clip = coughs[int(rng.integers(len(coughs)))]
        if narrow is not None and clip.sha256 in narrow:
            continue
        x = samples(clip)
        if x is None or len(x) < RATE // 10:
            return None
        runs = active_runs(x)
        if not runs:
            return None
        pad = int(PAD_S * RATE)
        a, b = max(0, runs[0][0] - pad), min(len(x), runs[-1][1] + pad)
        if narrow is not None and not _wideband(x[a:b]):
            narrow.add(clip.sha256)
            continue
        return clip, x[a:b], [(s - a, e - a) for s, e in runs]
    return None


def _wideband(x: np.ndarray) -> bool:
    """Whether a cough's median window reaches above 4 kHz (``ml.bandwidth``)."""
    return bool(np.median(bandwidth.high_share(x)) >= bandwidth.WIDEBAND_DB)


def _free_slot(
    taken: list[tuple[int, int]], length: int, total: int, rng: np.random.Generator
) -> int | None:
    guard = int(GUARD_S * RATE)
    for _ in range(200):
        start = int(rng.integers(guard, max(guard + 1, total - length - guard)))
        if all(start + length + guard <= a or start >= b + guard for a, b in taken):
            return start
    return None


def material(
    coughs_dir: Path, labelled_dir: Path, split: str, seed: int, with_evaluation_only: bool
) -> tuple[list[Clip], dict[str, list[Clip]], list[Clip]]:
    """The split's coughs, its other sounds by category, and the backgrounds."""
    labelled = read_labelled(labelled_dir)
    coughs = [
        c
        for c in read_coughs(coughs_dir) + [c for c in labelled if c.label]
        if split_of(c, seed) == split and not c.source.startswith(EVAL_ONLY_PREFIX)
    ]
    others: dict[str, list[Clip]] = defaultdict(list)
    backgrounds = []
    for clip in labelled:
        if clip.label:
            continue
        eval_only = clip.source.startswith(EVAL_ONLY_PREFIX)
        if clip.category in BACKGROUND_CATEGORIES and not eval_only:
            if (
                clip.path.name not in SYNTHETIC_NOISE
                and clip.source not in NOT_BACKGROUNDS
                and clip.path.stat().st_size > 200_000
            ):
                backgrounds.append(clip)
            continue
        if eval_only and not with_evaluation_only:
            continue
        if eval_only or split_of(clip, seed) == split:
            others[clip.category].append(clip)
    if not coughs or not others or not backgrounds:
        raise ValueError(
            f"{labelled_dir} lacks coughs, other sounds or backgrounds for the {split} split: "
            "run `tussis gate-data` first"
        )
    return coughs, dict(sorted(others.items())), backgrounds


def make_long_recordings(
    out: Path,
    coughs_dir: Path,
    labelled_dir: Path,
    split: str,
    seed: int = 0,
    count: int = 8,
    minutes: float = 30.0,
    split_seed: int = 0,
    with_evaluation_only: bool = False,
    coughs_per_hour: Sequence[float] = COUGHS_PER_HOUR,
    channel: str = "mixed",
) -> dict[str, Any]:
    """Write ``count`` long recordings of ``minutes`` each into ``out``, the k-th
    with ``coughs_per_hour[k % len(coughs_per_hour)]`` coughs an hour on average,
    all through one ``channel`` (see the module docstring)."""
    if channel not in CHANNELS:
        raise ValueError(f"channel must be one of {', '.join(CHANNELS)}, not {channel!r}")
    if split not in ("validation", "test"):
        raise ValueError("long recordings are made from the validation or the test split")
    if with_evaluation_only and split != "test":
        raise ValueError("evaluation-only recordings never go into a set anything is chosen on")
    coughs, others, backgrounds = material(
        coughs_dir, labelled_dir, split, split_seed, with_evaluation_only
    )
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache: dict[str, np.ndarray | None] = {}

    def samples(clip: Clip) -> np.ndarray | None:
        if clip.sha256 not in cache:
            if len(cache) > 400:
                cache.clear()
            cache[clip.sha256] = _load(clip)
        return cache[clip.sha256]

    narrow: set[str] = set()  # coughs left out of a wideband night

    made = []
    total = int(minutes * 60 * RATE)
    for index in range(count):
        name = f"long-{split}-{index:03d}"
        per_hour = coughs_per_hour[index % len(coughs_per_hour)]
        back = backgrounds[int(rng.integers(len(backgrounds)))]
        back_x = samples(back)
        level = float(rng.uniform(*BACKGROUND_DBFS))
        audio = _background(
            back_x if back_x is not None else np.zeros(RATE, np.float32), total, level, rng
        )
        audio += (conditions.pink(total, rng) * ROOM_TONE_RMS).astype(np.float32)
        placed = [
            Placed("background", back.category, back.source, back.path.name, 0.0, total / RATE)
        ]
        taken: list[tuple[int, int]] = []
        annotation: list[Span] = []
        n_coughs = int(rng.poisson(per_hour * minutes / 60))
        n_others = int(rng.poisson(OTHER_PER_HOUR * minutes / 60))
        kinds = ["cough"] * n_coughs + ["other"] * n_others
        rng.shuffle(kinds)
        categories = list(others)
        for kind in kinds:
            if kind == "cough":
                drawn = _draw_cough(coughs, samples, rng, narrow if channel == "wideband" else None)
                if drawn is None:
                    continue
                clip, x, runs = drawn
                x = _fade(_at_peak(x, float(rng.uniform(*COUGH_PEAK_DBFS))))
            else:
                category = categories[int(rng.integers(len(categories)))]
                clip = others[category][int(rng.integers(len(others[category])))]
                sound = samples(clip)
                if sound is None or len(sound) < RATE // 10:
                    continue
                x = sound
                if len(x) > MAX_OTHER_S * RATE:
                    start = int(rng.integers(0, len(x) - int(MAX_OTHER_S * RATE)))
                    x = x[start : start + int(MAX_OTHER_S * RATE)]
                x = _fade(_at_peak(x, float(rng.uniform(*OTHER_PEAK_DBFS))))
            at = _free_slot(taken, len(x), total, rng)
            if at is None:
                continue
            taken.append((at, at + len(x)))
            audio[at : at + len(x)] += x
            placed.append(
                Placed(
                    kind,
                    clip.category,
                    clip.source,
                    clip.path.name,
                    round(at / RATE, 3),
                    round((at + len(x)) / RATE, 3),
                )
            )
            if kind == "cough":
                annotation += [
                    Span(round((at + s) / RATE, 3), round((at + e) / RATE, 3)) for s, e in runs
                ]
        if channel == "phone":
            audio = conditions.phone_band(audio, rng)
        write_wav(out / f"{name}.wav", audio)
        write_annotation(out / f"{name}.csv", sorted(annotation, key=lambda s: s.start_s))
        with open(out / f"{name}.placed.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(Placed.__dataclass_fields__))
            writer.writeheader()
            for p in sorted(placed, key=lambda p: (p.start_s, p.kind)):
                writer.writerow(asdict(p))
        made.append(
            {
                "name": name,
                "minutes": minutes,
                "coughs_per_hour_drawn": per_hour,
                "cough_placements": sum(p.kind == "cough" for p in placed),
                "cough_events": len(annotation),
                "other_sounds": sum(p.kind == "other" for p in placed),
                "background": f"{back.source}/{back.category}/{back.path.name}",
                "background_dbfs": round(level, 1),
            }
        )
    sources = []
    if (Path(labelled_dir) / RECORD).is_file():
        sources = json.loads((Path(labelled_dir) / RECORD).read_text())["sources"]
    record = {
        "split": split,
        "seed": seed,
        "split_seed": split_seed,
        "with_evaluation_only": with_evaluation_only,
        "channel": channel,
        "coughs": sorted({c.source for c in coughs}),
        "narrowband_coughs_left_out": len(narrow),
        "other_categories": {k: len(v) for k, v in others.items()},
        "rules": {
            "cough_peak_dbfs": COUGH_PEAK_DBFS,
            "other_peak_dbfs": OTHER_PEAK_DBFS,
            "background_rms_dbfs": BACKGROUND_DBFS,
            "other_sounds_per_hour": OTHER_PER_HOUR,
            "coughs_per_hour": list(coughs_per_hour),
            "active_db": ACTIVE_DB,
        },
        "recordings": made,
        "gathered_from": sources,
    }
    (out / "SET.json").write_text(json.dumps(record, indent=1) + "\n")
    return record
