"""``tussis train-cough-gate``: the cough detector, which says whether a recording
contains a cough at all before any diagnosis is attempted, and finds the coughs of
long recordings.

It scores every YAMNet window (0.975 s, every 0.48 s) from that window's embedding
and 521 AudioSet class scores (as logits), with one of the designs of
``ml.detector``, and takes the maximum over windows: a single cough inside a long,
mostly silent recording is enough, and the windows that pass are where the cough
is (``Prediction.segments``). A window's score depends on that window alone, so a
long recording scored in segments gives the same scores as scored whole.

Training is multiple-instance: a cough recording says that *some* window holds a
cough, not which. Its positive windows are the two loudest-ranked by YAMNet's
own ``Cough`` score among windows within 15 dB of the recording's loudest; every
window of a non-cough recording is negative, and so is the room tone around a
cough padded with silence. Coughs are augmented with every condition of
``ml.conditions``; negatives with ``NEGATIVE_CONDITIONS`` (all but the padding
and the room), so that none of those conditions alone means "cough".

Recordings are split into train, validation and test by recording (by
participant where the file names say who recorded them); recordings of an
evaluation-only source (``ml.gate_data``) always go to test. Every design is
fitted on train; each gets the threshold that keeps 97 % of validation coughs in
every condition, and the design accepting the fewest validation non-coughs per
category (then overall) is shipped. The counting threshold is chosen apart, on
long recordings made from the validation split (``ml.long_recordings``,
``ml.counting``). Every figure in the card is measured on data nothing was chosen on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ml import bandwidth, conditions, detector, yamnet
from ml.backbones import (
    BAND_FEATURES,
    CONTEXT_FEATURES,
    WINDOW_FEATURES,
    YamnetBackbone,
    window_features,
    with_context,
)
from ml.bundle import SPLIT_FILE, Head, Manifest, read_head, read_manifest, write_manifest
from ml.datasets import file_sha256, load_dataset
from ml.detector import WindowDetector
from ml.gate_data import EVAL_ONLY_PREFIX, RECORD
from ml.selection import fit_logistic
from ml.spectrogram import SpectrogramParams
from ml.training import DISCLAIMER, TrainOptions
from shared.audio import AudioError, check_usable, decode
from tussis.formats import AUDIO_SUFFIXES

log = logging.getLogger(__name__)

LABELS = ("no cough", "cough")
KEEP_VALIDATION_COUGHS = 0.97
POSITIVE_WINDOWS = 2  # per cough recording and condition
LOUD_DB = 15.0  # a positive window is within this of the recording's loudest
PAD_QUIET_DB = 35.0  # a padded cough's windows this far below its loudest are room tone
HEAD_C_GRID = (0.001, 0.003, 0.01)  # the window head's inverse L2 strength
# The designs' settings (ml.detector), each fitted and the best chosen on validation.
CLASS_LOGIT_COMPONENTS = (0, 16, 64)
CLASS_LOGIT_L2 = 1e-3
ANCHOR_CAPS = (4.0, 8.0)
VETO_QUANTILES = (0.999, 1.0)
# The wideband veto (ml.detector.WindowDetector.wideband_veto, on windows that
# ml.bandwidth reads as wideband): its margins are quantiles over the training
# coughs' wideband loud windows, on laughter alone or on every voice confuser.
WIDEBAND_VETOES = (("laughter", ("laughter",), 0.99), ("voice confusers", detector.VOICE, 0.999))
DETECTOR_FILE = "detector.npz"
# Every design's full test figures, the validation rates, the previous gate's rates
# and the counting sweeps: in the bundle beside the manifest, which keeps the chosen
# design's figures and a brief of each design (the manifest is stored with every
# served model and read by the API).
REPORT_FILE = "report.json"
NEGATIVE_CONDITIONS = (
    "original",
    "phone_band",
    "noise_10db",
    "quieter_20db",
    "digital_silence",
    "single_event",
)
SPLIT_FRACTIONS = (0.6, 0.2)  # train, validation; the rest is test


@dataclass(frozen=True)
class Clip:
    path: Path
    label: int  # 1 = cough
    source: str
    category: str
    group: str  # recordings of one person stay in one split
    sha256: str


ESC_NAME = re.compile(r"^\d+-(\d+)-[A-Z]-\d+$")  # ESC-10/50: fold-freesoundID-take-class


def _group(path: Path, sha256: str) -> str:
    """Recordings of one person (Coswara: "<participant>_<kind>") or cut from one
    freesound recording (ESC) stay in one split."""
    stem = path.stem
    if (match := ESC_NAME.match(stem)) is not None:
        return "freesound:" + match.group(1)
    head = stem.split("_", 1)[0]
    return head if "_" in stem and len(head) >= 12 else sha256


def read_coughs(folder: Path) -> list[Clip]:
    """Every usable recording of a labelled cough data set (its label is ignored)."""
    return [
        Clip(ex.path, 1, f"{Path(folder).name}:{ex.source}", "cough", ex.sha256, ex.sha256)
        for ex in load_dataset(folder)
    ]


def read_labelled(root: Path) -> list[Clip]:
    """``ROOT/<source>/<category>/<file>``; the category ``cough`` is positive."""
    clips = []
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        rel = path.relative_to(root).parts
        if len(rel) < 3:
            continue
        source, category = rel[0], rel[-2]
        digest = file_sha256(path)
        clips.append(
            Clip(path, int(category == "cough"), source, category, _group(path, digest), digest)
        )
    return clips


def read_synthetic(folder: Path) -> list[Clip]:
    """``tussis make-negatives`` output: ``<kind>-NNN.wav``."""
    clips = []
    for path in sorted(Path(folder).glob("*.wav")):
        digest = file_sha256(path)
        kind = "synthetic " + path.stem.rsplit("-", 1)[0]
        clips.append(Clip(path, 0, "synthetic", kind, digest, digest))
    return clips


def split_of(clip: Clip, seed: int) -> str:
    if clip.source.startswith(EVAL_ONLY_PREFIX):
        return "test"  # never trained on, nothing chosen on it (ml.gate_data)
    bucket = int(hashlib.sha256(f"{seed}:{clip.group}".encode()).hexdigest(), 16) % 1000 / 1000
    train, validation = SPLIT_FRACTIONS
    if bucket < train:
        return "train"
    return "validation" if bucket < train + validation else "test"


@dataclass
class Windows:
    """One recording under one condition: per-window features and loudness."""

    clip: Clip
    condition: str
    features: np.ndarray  # (windows, 1,546): BAND_FEATURES
    loudness_db: np.ndarray  # (windows,)


def _loudness(samples: np.ndarray) -> np.ndarray:
    frames = yamnet.frame(samples).astype(np.float64)
    return np.asarray(10 * np.log10(np.mean(frames**2, axis=1) + 1e-12), dtype=np.float32)


def extract_windows(
    clips: Sequence[Clip],
    backbone: YamnetBackbone,
    cache_dir: Path | None,
    progress: bool,
) -> tuple[list[Windows], dict[str, str]]:
    """Windows of every clip under its conditions (rows of ``BAND_FEATURES``: the
    YAMNet row and the window's high-band share); unusable recordings are reported."""
    jobs = [
        (clip, name)
        for clip in clips
        for name in (conditions.CONDITIONS if clip.label else NEGATIVE_CONDITIONS)
    ]
    out: list[Windows] = []
    rejected: dict[str, str] = {}
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        (cache / "gate-windows").mkdir(parents=True, exist_ok=True)
        (cache / "gate-band").mkdir(parents=True, exist_ok=True)
    decoded: dict[str, np.ndarray | None] = {}

    def varied(clip: Clip, name: str) -> np.ndarray | None:
        nonlocal decoded
        if clip.sha256 not in decoded:
            try:
                audio = decode(clip.path.read_bytes(), 16000, max_seconds=121)
                check_usable(audio, 0.3, 120.0, -60.0)
                decoded = {clip.sha256: audio.samples}  # one clip at a time in memory
            except AudioError as exc:
                rejected[f"{clip.source}/{clip.path.name}"] = exc.code
                decoded = {clip.sha256: None}
        samples = decoded[clip.sha256]
        if samples is None:
            return None
        return conditions.apply(name, samples, int(clip.sha256[:8], 16))

    for clip, name in tqdm(jobs, desc="YAMNet windows", unit="clip", disable=not progress):
        stem = f"{clip.sha256[:24]}-{name}-v{conditions.VERSION}"
        key = cache / "gate-windows" / f"{stem}.npz" if cache else None
        band_key = cache / "gate-band" / f"{stem}-b{bandwidth.VERSION}.npy" if cache else None
        x: np.ndarray | None = None
        if key is not None and key.is_file():
            with np.load(key) as z:
                features, loudness = z["features"].astype(np.float32), z["loudness"]
        else:
            if (x := varied(clip, name)) is None:
                continue
            features, loudness = window_features(backbone.yamnet.run(x)), _loudness(x)
            if key is not None:
                np.savez(key, features=features.astype(np.float16), loudness=loudness)
        if band_key is not None and band_key.is_file():
            stats = np.load(band_key)
        else:
            if x is None and (x := varied(clip, name)) is None:
                continue
            stats = bandwidth.band_stats(x)
            if band_key is not None:
                np.save(band_key, stats)
        share = bandwidth.high_share_db(stats)[:, None]
        out.append(Windows(clip, name, np.hstack([features, share]), loudness))
    return out, rejected


def instances(item: Windows) -> tuple[list[int], list[int]]:
    """The windows taken as cough and as not-cough (see the module docstring)."""
    n = len(item.features)
    if not item.clip.label:
        return [], list(range(n))
    loudest = float(item.loudness_db.max())
    loud = item.loudness_db >= loudest - LOUD_DB
    cough_logit = item.features[:, 1024 + yamnet.COUGH]
    ranked = [int(i) for i in np.argsort(-cough_logit) if loud[i]]
    negatives: list[int] = []
    if item.condition == "padded_with_silence":
        negatives = [i for i in range(n) if item.loudness_db[i] < loudest - PAD_QUIET_DB]
    return ranked[:POSITIVE_WINDOWS], negatives


def training_rows(items: Iterable[Windows], context: bool) -> tuple[np.ndarray, np.ndarray]:
    """The training windows (:func:`instances`) as rows and 0/1 labels; with the
    recording's context appended (``with_context``) when ``context``."""
    xs, ys = [], []
    for item in items:
        pos, neg = instances(item)
        rows = item.features[:, : detector.YAMNET_COLUMNS]
        rows = with_context(rows) if context else rows
        xs += [rows[pos], rows[neg]]
        ys += [np.ones(len(pos)), np.zeros(len(neg))]
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def native_detector() -> WindowDetector:
    """YAMNet's own ``Cough`` class, untrained (its logit is the row's column)."""
    width = detector.EMBEDDING + 521
    weights = np.zeros(width)
    weights[detector.COUGH_COLUMN] = 1.0
    return WindowDetector("native", Head(np.zeros(width), np.ones(width), weights, 0.0))


def loud_windows(items: Iterable[Windows]) -> np.ndarray:
    """Every window within ``LOUD_DB`` of its recording's loudest, of these recordings."""
    rows = [i.features[i.loudness_db >= i.loudness_db.max() - LOUD_DB] for i in items]
    return np.concatenate(rows) if rows else np.zeros((0, detector.EMBEDDING + 521), np.float32)


def fit_designs(train: Sequence[Windows]) -> list[WindowDetector]:
    """Every design of ``ml.detector`` fitted on the training split, in the order
    ties are broken (the simpler first). Each scores a window from that window alone,
    so a long recording cut into segments anywhere gives the same scores (ml.events);
    the previous gates' recording context (the clip's mean and maximum logits and
    mean embedding) made a window's score depend on what else was passed with it."""
    rows, y = training_rows(train, context=False)
    # A veto never fires on any loud window of any training cough (q = 1) or on all
    # but one in a thousand of them.
    coughs = loud_windows(i for i in train if i.clip.label)
    mean, components = detector.principal_components(
        rows[:: max(1, len(rows) // 20000), : detector.EMBEDDING], max(CLASS_LOGIT_COMPONENTS)
    )
    groups = detector.group_logits(rows)
    out = [native_detector()]
    for k in CLASS_LOGIT_COMPONENTS:
        projected = (rows[:, : detector.EMBEDDING] - mean) @ components[:k].T
        head = detector.fit_constrained_logistic(
            np.hstack([groups, projected]),
            y,
            np.concatenate([detector.SIGNS, np.zeros(k, np.int8)]),
            CLASS_LOGIT_L2,
        )
        out.append(
            WindowDetector(
                f"class-logit head, {k} embedding components",
                head,
                inputs="groups",
                components=components[:k].astype(np.float32),
                component_mean=mean.astype(np.float32),
            )
        )
    heads = {c: fit_logistic(rows, y, c, max_iter=5000) for c in HEAD_C_GRID}
    for c, head in heads.items():
        out.append(WindowDetector(f"window head (C={c:g})", head))
    for c, head in heads.items():
        for cap in ANCHOR_CAPS:
            out.append(
                WindowDetector(
                    f"window head (C={c:g}) anchored to YAMNet's Cough + {cap:g}", head, cap=cap
                )
            )
    for vetoed, named in (("non-voice confusers", detector.NOT_VOICE),
                          ("all confusers", detector.CONFUSERS)):  # fmt: skip
        for q in VETO_QUANTILES:
            margins = detector.veto_margins(coughs, named, q)
            for c, head in heads.items():
                out.append(
                    WindowDetector(
                        f"window head (C={c:g}) + veto on {vetoed} (q={q:g})", head, veto=margins
                    )
                )
    wide = coughs[coughs[:, detector.BAND_COLUMN] >= bandwidth.WIDEBAND_DB]
    for vetoed, named, q in WIDEBAND_VETOES:
        margins = detector.veto_margins(wide, named, q)
        for c, head in heads.items():
            out.append(
                WindowDetector(
                    f"window head (C={c:g}) + veto on non-voice confusers (q=1) "
                    f"+ on {vetoed} where wideband (q={q:g})",
                    head,
                    veto=detector.veto_margins(coughs, detector.NOT_VOICE, 1.0),
                    wideband_veto=margins,
                    wideband_db=bandwidth.WIDEBAND_DB,
                )
            )
    return out


Scorer = Callable[[np.ndarray], np.ndarray]  # window rows -> window scores


def bundle_scorer(bundle: Path) -> tuple[Scorer, Manifest]:
    """How a gate bundle scores window rows, for any gate written so far: a detector
    (``ml.detector``), or a logistic head on the rows, with the recording's context
    appended where its features say so (the gates before the detector)."""
    manifest = read_manifest(bundle)
    if "detector" in manifest.backbone:
        return WindowDetector.load(Path(bundle) / manifest.head).scores, manifest
    head = read_head(bundle, manifest)
    yamnet_rows = detector.YAMNET_COLUMNS
    if manifest.backbone.get("features") == CONTEXT_FEATURES:
        return (lambda rows: head.scores(with_context(rows[:, :yamnet_rows]))), manifest
    return (lambda rows: head.scores(rows[:, :yamnet_rows])), manifest


def clip_scores(model: WindowDetector | Scorer, items: Sequence[Windows]) -> np.ndarray:
    """Each recording's score: its best window's."""
    score = model.scores if isinstance(model, WindowDetector) else model
    return np.array([float(score(i.features).max()) for i in items])


def choose_threshold(scores: np.ndarray, validation: Sequence[Windows]) -> float:
    """Keep ``KEEP_VALIDATION_COUGHS`` of validation coughs in every condition."""
    by_condition: dict[str, list[float]] = defaultdict(list)
    for score, item in zip(scores, validation, strict=True):
        if item.clip.label:
            by_condition[item.condition].append(float(score))
    return min(float(np.quantile(s, 1 - KEEP_VALIDATION_COUGHS)) for s in by_condition.values())


def category(clip: Clip) -> str:
    """A non-cough recording's category across sources (synthetic kinds apart)."""
    return clip.category


def objective(scores: np.ndarray, items: Sequence[Windows], threshold: float) -> dict[str, float]:
    """What a design is chosen on (validation): non-coughs accepted, averaged over
    categories (as recorded); then over recordings; and the worst condition's
    share of coughs refused."""
    accepted: dict[str, list[bool]] = defaultdict(list)
    refused: dict[str, list[bool]] = defaultdict(list)
    for score, item in zip(scores, items, strict=True):
        if item.clip.label:
            refused[item.condition].append(bool(score < threshold))
        elif item.condition == "original":
            accepted[category(item.clip)].append(bool(score >= threshold))
    every = [a for v in accepted.values() for a in v]
    return {
        "non_coughs_accepted_per_category": round(
            float(np.mean([np.mean(v) for v in accepted.values()])) if accepted else 0.0, 4
        ),
        "non_coughs_accepted": round(float(np.mean(every)) if every else 0.0, 4),
        "worst_condition_coughs_refused": round(
            max((float(np.mean(v)) for v in refused.values()), default=0.0), 4
        ),
    }


def rates(scores: np.ndarray, items: Sequence[Windows], threshold: float) -> dict[str, Any]:
    """Coughs refused per source and condition; non-coughs accepted per category
    and source."""
    refused: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    accepted: dict[str, list[bool]] = defaultdict(list)
    for score, item in zip(scores, items, strict=True):
        passed = bool(score >= threshold)
        if item.clip.label:
            refused[item.clip.source][item.condition].append(not passed)
        elif item.condition == "original":
            accepted[f"{item.clip.category} ({item.clip.source})"].append(passed)
    return {
        "coughs_refused": {
            source: {c: {"n": len(v), "rate": round(float(np.mean(v)), 4)} for c, v in by.items()}
            for source, by in sorted(refused.items())
        },
        "non_coughs_accepted": {
            category: {"n": len(v), "rate": round(float(np.mean(v)), 4)}
            for category, v in sorted(accepted.items())
        },
    }


def summary(scores: np.ndarray, items: Sequence[Windows], threshold: float) -> dict[str, Any]:
    """A design's test figures in brief: coughs refused per condition and non-coughs
    accepted per category, trained-on sources and evaluation-only ones apart."""
    out: dict[str, Any] = {}
    for part, keep in (("sources", False), ("evaluation_only", True)):
        refused: dict[str, list[bool]] = defaultdict(list)
        accepted: dict[str, list[bool]] = defaultdict(list)
        for score, item in zip(scores, items, strict=True):
            if item.clip.source.startswith(EVAL_ONLY_PREFIX) != keep:
                continue
            if item.clip.label:
                refused[item.condition].append(bool(score < threshold))
            elif item.condition == "original":
                accepted[category(item.clip)].append(bool(score >= threshold))
        out[part] = {
            "coughs_refused": {c: round(float(np.mean(v)), 4) for c, v in refused.items()},
            "non_coughs_accepted": {
                c: [int(np.sum(v)), len(v)] for c, v in sorted(accepted.items())
            },
        }
    return out


# What the manifest keeps of each design's test figures (the rest is in REPORT_FILE):
# the evaluation-only categories the issue names, and ESC-50's animals.
BRIEF_CATEGORIES = ("laughter", "door knocks", "door slams", "throat clearing", "breathing")
ANIMALS = ("pig", "cow", "cat", "crow", "frog", "hen", "insects", "sheep", "chirping birds",
           "crickets")  # fmt: skip


def brief(design: dict[str, Any]) -> dict[str, Any]:
    """A design's figures in a few numbers (the manifest's comparison table): its
    threshold and validation objective; on test, evaluation-only non-coughs accepted
    ``[accepted, of]`` in all, in :data:`BRIEF_CATEGORIES` and in :data:`ANIMALS`,
    and the worst condition's share of coughs refused, trained-on sources and
    evaluation-only ones apart."""
    test = design["test"]
    accepted = test["evaluation_only"]["non_coughs_accepted"]

    def total(names: Iterable[str]) -> list[int]:
        cells = [accepted[n] for n in names if n in accepted]
        return [sum(c[0] for c in cells), sum(c[1] for c in cells)]

    return {
        "threshold": design["threshold"],
        "validation": design["validation"],
        "test": {
            "evaluation_only_accepted": total(accepted),
            **{name: total([name]) for name in BRIEF_CATEGORIES},
            "animals": total(ANIMALS),
            "coughs_refused_worst": max(test["sources"]["coughs_refused"].values(), default=0.0),
            "evaluation_only_coughs_refused_worst": max(
                test["evaluation_only"]["coughs_refused"].values(), default=0.0
            ),
        },
    }


def format_rates(report: dict[str, Any]) -> str:
    names = list(conditions.CONDITIONS)
    lines = ["coughs refused (held-out test split), by source and condition:"]
    lines.append(f"  {'source':<32}" + "".join(f"{n[:12]:>14}" for n in names))
    for source, by in report["coughs_refused"].items():
        cells = [by.get(n) for n in names]
        lines.append(
            f"  {source[:32]:<32}"
            + "".join(f"{c['rate']:>8.1%} n={c['n']:<3}" if c else f"{'-':>14}" for c in cells)
        )
    lines.append("non-coughs accepted (held-out test split), by category:")
    for category, cell in report["non_coughs_accepted"].items():
        lines.append(f"  {category:<32}{cell['rate']:>8.1%}  n={cell['n']}")
    return "\n".join(lines)


def format_designs(designs: dict[str, Any], chosen: str) -> str:
    lines = ["designs (chosen on validation: non-coughs accepted per category, then overall):"]
    for name, d in designs.items():
        v = d["validation"]
        mark = "*" if name == chosen else " "
        lines.append(
            f" {mark} {name[:60]:<60} threshold {d['threshold']:.3f}  "
            f"per category {v['non_coughs_accepted_per_category']:.3f}  "
            f"overall {v['non_coughs_accepted']:.3f}  "
            f"worst refused {v['worst_condition_coughs_refused']:.3f}"
        )
    return "\n".join(lines)


def gather_items(
    coughs_dir: Path,
    negatives_dir: Path,
    labelled_dirs: Sequence[Path],
    options: TrainOptions,
) -> tuple[list[Clip], list[Windows], dict[str, str]]:
    """Every recording the gate learns from or is measured on, with its windows."""
    if options.yamnet_model is None:
        raise ValueError("the cough gate needs --yamnet-model (or TUSSIS_YAMNET_MODEL)")
    backbone = YamnetBackbone(
        options.yamnet_model, features=WINDOW_FEATURES, url=options.yamnet_url
    )
    clips = read_coughs(coughs_dir) + read_synthetic(negatives_dir)
    for folder in labelled_dirs:
        clips += read_labelled(folder)
    items, rejected = extract_windows(clips, backbone, options.cache_dir, options.progress)
    return clips, items, rejected


def train_cough_gate(
    coughs_dir: Path,
    negatives_dir: Path,
    out: Path,
    options: TrainOptions,
    name: str = "cough-gate",
    version: str | None = None,
    labelled_dirs: Sequence[Path] = (),
    counting_validation: Sequence[Path] = (),
    counting_test: Sequence[Path] = (),
    previous: Path | None = None,
) -> dict[str, Any]:
    """Fit every design, choose one and its threshold on validation, report them all
    on test, write the chosen one as the bundle (a brief manifest and the full
    ``REPORT_FILE``). With ``counting_validation`` (sets of long recordings made from
    the validation split, ``tussis make-long-recordings``), also choose the counting
    threshold on them together and measure it on each set and each ``counting_test``.
    ``previous``, a gate bundle this one replaces, is measured beside it on the same
    test recordings and long recordings (its card's figures were on its own split)."""
    clips, items, rejected = gather_items(coughs_dir, negatives_dir, labelled_dirs, options)
    parts: dict[str, list[Windows]] = defaultdict(list)
    for item in items:
        parts[split_of(item.clip, options.seed)].append(item)
    candidates = fit_designs(parts["train"])
    designs: dict[str, Any] = {}
    best: tuple[float, float] | None = None
    chosen = candidates[0]
    for candidate in candidates:
        validation = clip_scores(candidate, parts["validation"])
        threshold = choose_threshold(validation, parts["validation"])
        judged = objective(validation, parts["validation"], threshold)
        designs[candidate.design] = {
            "threshold": round(threshold, 6),
            "validation": judged,
            "test": summary(clip_scores(candidate, parts["test"]), parts["test"], threshold),
        }
        key = (judged["non_coughs_accepted_per_category"], judged["non_coughs_accepted"])
        if best is None or key < best:
            best, chosen = key, candidate
    threshold = designs[chosen.design]["threshold"]
    report = {
        "threshold": threshold,
        "design": chosen.design,
        "designs": designs,
        "test": rates(clip_scores(chosen, parts["test"]), parts["test"], threshold),
        "validation": rates(
            clip_scores(chosen, parts["validation"]), parts["validation"], threshold
        ),
        "rejected_as_unusable": rejected,
    }
    if previous is not None:
        score_previous, old = bundle_scorer(previous)
        report["previous"] = {
            "name": old.name,
            "version": old.version,
            "threshold": old.threshold,
            "test": rates(clip_scores(score_previous, parts["test"]), parts["test"], old.threshold),
        }
    split_counts = {
        k: {
            "coughs": len({i.clip.sha256 for i in v if i.clip.label}),
            "non_coughs": len({i.clip.sha256 for i in v if not i.clip.label}),
        }
        for k, v in sorted(parts.items())
    }
    manifest = Manifest(
        name=name,
        version=version or datetime.now(UTC).strftime("%Y.%m.%d"),
        backbone={
            "name": "yamnet",
            "features": WINDOW_FEATURES if chosen.wideband_veto is None else BAND_FEATURES,
            "pooling": "max",
            "detector": chosen.design,
        },
        spectrogram=SpectrogramParams(),
        labels=LABELS,
        threshold=threshold,
        head=DETECTOR_FILE,
        card={
            "intended_use": "Decides whether a recording contains a cough before diagnosis, "
            "and finds the coughs of long recordings. " + DISCLAIMER,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "method": f"{chosen.design}: a score for each YAMNet window from the one YAMNet "
            "pass (embedding and AudioSet class logits), maximum over windows for a clip "
            "(ml/detector.py, ml/cough_gate.py)",
            "data": {
                "coughs": Path(coughs_dir).name,
                "labelled": [Path(d).name for d in labelled_dirs],
                "gathered_from": [
                    source
                    for d in labelled_dirs
                    if (Path(d) / RECORD).is_file()
                    for source in json.loads((Path(d) / RECORD).read_text())["sources"]
                ],
                "evaluation_only": sorted(
                    {c.source for c in clips if c.source.startswith(EVAL_ONLY_PREFIX)}
                ),
                "synthetic_negatives": "tussis make-negatives",
                "sources": sorted({c.source for c in clips}),
            },
            "conditions": list(conditions.CONDITIONS),
            "split": split_counts,
            "threshold_rule": f"keeps {KEEP_VALIDATION_COUGHS:.0%} of validation coughs in "
            "every condition",
            "design_rule": "the design accepting the fewest validation non-coughs per category "
            "(then overall) at its own threshold",
            "metrics": {
                "threshold": threshold,
                "design": chosen.design,
                "designs": {k: brief(v) for k, v in designs.items()},
                "test": report["test"],
                "report": REPORT_FILE,
            },
        },
    )
    out = Path(out)
    write_manifest(out, manifest)
    _write_report(out, report)
    chosen.save(out / DETECTOR_FILE)
    by_split: dict[str, set[str]] = defaultdict(set)
    for clip in clips:
        by_split[split_of(clip, options.seed)].add(clip.sha256)
    (out / SPLIT_FILE).write_text(json.dumps({k: sorted(v) for k, v in by_split.items()}) + "\n")
    if counting_validation:
        report["counting"] = choose_counting_threshold(
            out, options, counting_validation, counting_test, previous
        )
    return report


def choose_counting_threshold(
    bundle: Path,
    options: TrainOptions,
    validation: Sequence[Path],
    tests: Sequence[Path],
    previous: Path | None = None,
) -> dict[str, Any]:
    """The counting threshold with the highest episode sensitivity at or below
    ``ml.counting.MAX_FP_PER_HOUR`` over every validation set's long recordings
    together, written into the bundle's manifest with what it gives on each
    validation and test set (the sweeps go to its ``REPORT_FILE``)."""
    from ml import counting
    from ml.bundle import read_manifest
    from ml.model import load_model

    assert options.yamnet_model is not None
    model = load_model(bundle, yamnet_model=options.yamnet_model, yamnet_url=options.yamnet_url)
    key = counting.model_digest(bundle)
    cache = Path(options.cache_dir) / "long-recordings" if options.cache_dir else None

    def measured(folder: Path) -> list[counting.Recording]:
        return counting.read_set(folder, model.window_scores, key, cache, options.progress)

    on_validation = {Path(folder).name: measured(folder) for folder in validation}
    threshold, sweep = counting.choose_threshold(
        [r for recordings in on_validation.values() for r in recordings],
        counting.MAX_FP_PER_HOUR,
        counting.THRESHOLD_GRID,
    )
    sets = {
        Path(folder).name: (part, folder, on_validation.get(Path(folder).name) or measured(folder))
        for part, folders in (("validation", validation), ("test", tests))
        for folder in folders
    }
    result: dict[str, Any] = {
        "threshold": threshold,
        "rule": "the highest episode sensitivity over the validation sets' long recordings "
        f"together with at most {counting.MAX_FP_PER_HOUR:g} false positives per hour",
        "segment_windows": counting.SEGMENT_WINDOWS,
        "tolerance_s": counting.TOLERANCE_S,
        "chosen_on": sorted(on_validation),
        "sets": {
            name: {
                "part": part,
                "set": _set_record(folder),
                "at_threshold": _figures(counting.score(recordings, threshold)),
                "at_gate_threshold": _figures(counting.score(recordings, model.manifest.threshold)),
            }
            for name, (part, folder, recordings) in sets.items()
        },
    }

    def swept(recordings: list[counting.Recording]) -> list[dict[str, Any]]:
        return counting.choose_threshold(
            recordings, counting.MAX_FP_PER_HOUR, counting.THRESHOLD_GRID
        )[1]

    full: dict[str, Any] = {
        "sweep_on_validation": sweep,
        "sweeps": {name: swept(recordings) for name, (_, _, recordings) in sets.items()},
    }
    if previous is not None:
        # The previous gate counted with its clip threshold (it had no other), on the
        # same segments; its recording context makes its scores depend on them.
        old = load_model(previous, yamnet_model=options.yamnet_model, yamnet_url=options.yamnet_url)
        old_key = counting.model_digest(previous)
        result["previous"] = {
            name: _figures(
                counting.score(
                    counting.read_set(folder, old.window_scores, old_key, cache, False),
                    old.manifest.event_threshold,
                )
            )
            for name, (_, folder, _) in sets.items()
        }
    manifest = read_manifest(bundle)
    card = {**manifest.card, "counting": result}
    write_manifest(bundle, replace(manifest, counting_threshold=threshold, card=card))
    report_path = Path(bundle) / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    _write_report(bundle, {**report, "counting": {**result, **full}})
    return {**result, **full}


def _write_report(bundle: Path, report: dict[str, Any]) -> None:
    (Path(bundle) / REPORT_FILE).write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    """Counting figures without the per-recording and per-hour detail."""
    return {
        "threshold": report["threshold"],
        "hours": report["hours"],
        "recordings": report["recordings"],
        "episodes": report["episodes"],
        "events": report["events"],
        "hourly": {"pearson_r": report["hourly"]["pearson_r"]},
    }


def _set_record(folder: Path) -> dict[str, Any]:
    record = Path(folder) / "SET.json"
    if not record.is_file():
        return {"folder": Path(folder).name}
    data = json.loads(record.read_text())
    return {
        "folder": Path(folder).name,
        "split": data.get("split"),
        "seed": data.get("seed"),
        "with_evaluation_only": data.get("with_evaluation_only"),
        "channel": data.get("channel", "mixed"),
        "recordings": len(data.get("recordings", [])),
        "cough_events": sum(r["cough_events"] for r in data.get("recordings", [])),
        "other_sounds": sum(r["other_sounds"] for r in data.get("recordings", [])),
    }
