"""``tussis train-cough-gate``: the detector that says whether a recording
contains a cough at all, before any diagnosis is attempted.

It scores every YAMNet window (0.975 s, every 0.48 s) with a logistic head on
the window's embedding and its 521 AudioSet class scores (as logits), next to
the same for the whole recording (mean and maximum logits, mean embedding), and
takes the maximum over windows: a single cough inside a long, mostly silent
recording is enough, the windows that pass are where the cough is
(``Prediction.segments``), and a cough-like burst in a recording of speech or
sneezing is judged with that context.

Training is multiple-instance: a cough recording says that *some* window holds
a cough, not which. Its positive windows are the two loudest-ranked by YAMNet's
own ``Cough`` score among windows within 15 dB of the recording's loudest; every
window of a non-cough recording is negative, and so is the room tone around a
cough padded with silence. Coughs are augmented with every condition of
``ml.conditions``; negatives with ``NEGATIVE_CONDITIONS`` (all but the padding
and the room), so that none of those conditions alone means "cough".

Recordings are split into train, validation and test by recording (by
participant where the file names say who recorded them); recordings of an
evaluation-only source (``ml.gate_data``) always go to test. The threshold keeps
97 % of validation coughs in every condition; every figure in the card is
measured on the test split, which nothing was chosen on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ml import conditions, yamnet
from ml.backbones import CONTEXT_FEATURES, YamnetBackbone, window_features, with_context
from ml.bundle import SPLIT_FILE, Head, Manifest, write_bundle
from ml.datasets import file_sha256, load_dataset
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
HEAD_C = 0.003  # inverse L2 strength; chosen on the validation split only
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
    features: np.ndarray  # (windows, 1,545)
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
    """Windows of every clip under its conditions; unusable recordings are reported."""
    jobs = [
        (clip, name)
        for clip in clips
        for name in (conditions.CONDITIONS if clip.label else NEGATIVE_CONDITIONS)
    ]
    out: list[Windows] = []
    rejected: dict[str, str] = {}
    cache = Path(cache_dir) / "gate-windows" if cache_dir else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    decoded: dict[str, np.ndarray | None] = {}
    for clip, name in tqdm(jobs, desc="YAMNet windows", unit="clip", disable=not progress):
        stem = f"{clip.sha256[:24]}-{name}-v{conditions.VERSION}"
        key = cache / f"{stem}.npz" if cache else None
        if key is not None and key.is_file():
            with np.load(key) as z:
                out.append(Windows(clip, name, z["features"].astype(np.float32), z["loudness"]))
            continue
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
            continue
        seed = int(clip.sha256[:8], 16)
        varied = conditions.apply(name, samples, seed)
        raw = window_features(backbone.yamnet.run(varied))
        item = Windows(clip, name, raw, _loudness(varied))
        if key is not None:
            np.savez(key, features=item.features.astype(np.float16), loudness=item.loudness_db)
        out.append(item)
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


def fit_head(items: Iterable[Windows], c: float = HEAD_C) -> Head:
    xs, ys = [], []
    for item in items:
        pos, neg = instances(item)
        rows = with_context(item.features)
        xs += [rows[pos], rows[neg]]
        ys += [np.ones(len(pos)), np.zeros(len(neg))]
    return fit_logistic(np.concatenate(xs), np.concatenate(ys), c, max_iter=5000)


def clip_score(head: Head, item: Windows) -> float:
    return float(head.scores(with_context(item.features)).max())


def choose_threshold(head: Head, validation: Sequence[Windows]) -> float:
    """Keep ``KEEP_VALIDATION_COUGHS`` of validation coughs in every condition."""
    by_condition: dict[str, list[float]] = defaultdict(list)
    for item in validation:
        if item.clip.label:
            by_condition[item.condition].append(clip_score(head, item))
    return min(
        float(np.quantile(scores, 1 - KEEP_VALIDATION_COUGHS)) for scores in by_condition.values()
    )


def rates(head: Head, items: Sequence[Windows], threshold: float) -> dict[str, Any]:
    """Coughs refused per source and condition; non-coughs accepted per category
    and source."""
    refused: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    accepted: dict[str, list[bool]] = defaultdict(list)
    for item in items:
        passed = clip_score(head, item) >= threshold
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


def train_cough_gate(
    coughs_dir: Path,
    negatives_dir: Path,
    out: Path,
    options: TrainOptions,
    name: str = "cough-gate",
    version: str | None = None,
    labelled_dirs: Sequence[Path] = (),
) -> dict[str, Any]:
    """Train, choose the threshold on validation, report on test, write the bundle."""
    if options.yamnet_model is None:
        raise ValueError("the cough gate needs --yamnet-model (or TUSSIS_YAMNET_MODEL)")
    backbone = YamnetBackbone(
        options.yamnet_model, features=CONTEXT_FEATURES, url=options.yamnet_url
    )
    clips = read_coughs(coughs_dir) + read_synthetic(negatives_dir)
    for folder in labelled_dirs:
        clips += read_labelled(folder)
    items, rejected = extract_windows(clips, backbone, options.cache_dir, options.progress)
    parts: dict[str, list[Windows]] = defaultdict(list)
    for item in items:
        parts[split_of(item.clip, options.seed)].append(item)
    head = fit_head(parts["train"])
    threshold = choose_threshold(head, parts["validation"])
    report = {
        "threshold": threshold,
        "test": rates(head, parts["test"], threshold),
        "validation": rates(head, parts["validation"], threshold),
        "rejected_as_unusable": rejected,
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
            "features": CONTEXT_FEATURES,
            "pooling": "max",
        },
        spectrogram=SpectrogramParams(),
        labels=LABELS,
        threshold=threshold,
        card={
            "intended_use": "Decides whether a recording contains a cough before diagnosis. "
            + DISCLAIMER,
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "method": "logistic head on each YAMNet window (embedding and class-score logits, "
            "with the recording's mean and maximum logits and mean embedding), maximum over "
            "windows; multiple-instance training (see ml/cough_gate.py)",
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
            "metrics": report,
        },
    )
    out = Path(out)
    write_bundle(out, manifest, head)
    by_split: dict[str, set[str]] = defaultdict(set)
    for clip in clips:
        by_split[split_of(clip, options.seed)].add(clip.sha256)
    (out / SPLIT_FILE).write_text(json.dumps({k: sorted(v) for k, v in by_split.items()}) + "\n")
    return report
