"""``tussis evaluate`` and the metrics behind it, on held-out data: ROC AUC with a
bootstrap 95 % interval, accuracy, sensitivity and specificity at the bundle's
threshold, overall and within each recording source, next to the AUC that the
source alone achieves."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from ml.bundle import SPLIT_FILE, fingerprint, read_manifest
from ml.datasets import load_dataset
from ml.features import extract

log = logging.getLogger(__name__)

BOOTSTRAP_ROUNDS = 2000


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC (ties count half); ``None`` when one class is absent."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def bootstrap_auc_interval(
    labels: np.ndarray, scores: np.ndarray, seed: int, rounds: int = BOOTSTRAP_ROUNDS
) -> tuple[float, float] | None:
    labels = np.asarray(labels)
    if roc_auc(labels, scores) is None:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        idx = rng.integers(0, len(labels), len(labels))
        auc = roc_auc(labels[idx], np.asarray(scores)[idx])
        if auc is not None:
            values.append(auc)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def at_threshold(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    labels = np.asarray(labels)
    predicted = np.asarray(scores) >= threshold
    tp = int((predicted & (labels == 1)).sum())
    fn = int((~predicted & (labels == 1)).sum())
    tn = int((~predicted & (labels == 0)).sum())
    fp = int((predicted & (labels == 0)).sum())
    n = tp + fn + tn + fp
    return {
        "accuracy": (tp + tn) / n if n else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
    }


def summarise(labels: np.ndarray, scores: np.ndarray, threshold: float, seed: int) -> dict:
    labels = np.asarray(labels)
    interval = bootstrap_auc_interval(labels, scores, seed)
    return {
        "n": len(labels),
        "positives": int((labels == 1).sum()),
        "negatives": int((labels == 0).sum()),
        "roc_auc": roc_auc(labels, scores),
        "roc_auc_95ci": list(interval) if interval else None,
        **at_threshold(labels, scores, threshold),
    }


def choose_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """Maximise Youden's J (sensitivity + specificity - 1) on validation data."""
    labels = np.asarray(labels)
    candidates = np.unique(np.asarray(scores))
    best, best_j = 0.5, -1.0
    for t in candidates:
        m = at_threshold(labels, scores, float(t))
        j = (m["sensitivity"] or 0.0) + (m["specificity"] or 0.0) - 1.0
        if j > best_j:
            best, best_j = float(t), j
    return best


def source_prevalence(
    labels: Sequence[int] | np.ndarray, sources: Sequence[str] | np.ndarray
) -> dict[str, float]:
    labels_arr, sources_arr = np.asarray(labels), np.asarray(sources)
    return {
        str(s): float(labels_arr[sources_arr == s].mean())
        for s in sorted(set(sources_arr.tolist()))
    }


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    sources: np.ndarray,
    threshold: float,
    seed: int,
    source_rates: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The full report. ``source_rates`` (share of positives per source, from the
    training data) defines the source-only classifier; without it the evaluation
    data's own rates are used, which flatters that baseline."""
    labels, scores, sources = np.asarray(labels), np.asarray(scores), np.asarray(sources)
    rates = source_rates or source_prevalence(labels, sources)
    baseline = np.array([rates.get(str(s), 0.5) for s in sources])
    return {
        "threshold": threshold,
        "overall": summarise(labels, scores, threshold, seed),
        "by_source": {
            str(s): summarise(labels[sources == s], scores[sources == s], threshold, seed)
            for s in sorted(set(sources.tolist()))
        },
        "source_only": {
            "roc_auc": roc_auc(labels, baseline),
            "roc_auc_95ci": bootstrap_auc_interval(labels, baseline, seed),
            "positive_rate_by_source": rates,
            "rates_from": "training data" if source_rates else "evaluation data",
        },
    }


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"threshold {report['threshold']:.3f}"]
    header = (
        f"{'group':<14}{'n':>6}{'pos':>6}  {'AUC [95% CI]':<24}{'acc':>7}{'sens':>7}{'spec':>7}"
    )
    lines.append(header)
    groups = [("overall", report["overall"]), *report["by_source"].items()]
    for name, m in groups:
        ci = m["roc_auc_95ci"]
        auc = f"{_fmt(m['roc_auc'])} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else _fmt(m["roc_auc"])
        lines.append(
            f"{name:<14}{m['n']:>6}{m['positives']:>6}  {auc:<24}"
            f"{_fmt(m['accuracy']):>7}{_fmt(m['sensitivity']):>7}{_fmt(m['specificity']):>7}"
        )
    so = report["source_only"]
    ci = so["roc_auc_95ci"]
    extra = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
    lines.append(f"source alone  AUC {_fmt(so['roc_auc'])}{extra} (rates from {so['rates_from']})")
    c = report["overall"]["confusion"]
    lines.append(f"confusion (overall): tp={c['tp']} fn={c['fn']} tn={c['tn']} fp={c['fp']}")
    return "\n".join(lines)


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(np.asarray(labels), np.asarray(scores), drop_intermediate=False)
    return fpr, tpr


def write_outputs(
    out_dir: Path, report: dict, labels: np.ndarray, scores: np.ndarray, sources: np.ndarray
) -> None:
    """report.json, roc.png and confusion.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    groups = [("overall", np.ones(len(labels), bool))]
    groups += [(str(s), sources == s) for s in sorted(set(sources.tolist()))]
    for name, mask in groups:
        m = report["overall"] if name == "overall" else report["by_source"][name]
        if m["roc_auc"] is None:
            continue
        fpr, tpr = roc_points(labels[mask], scores[mask])
        ax.plot(fpr, tpr, label=f"{name} (AUC {m['roc_auc']:.2f}, n={m['n']})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("ROC on held-out recordings")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "roc.png")
    plt.close(fig)

    c = report["overall"]["confusion"]
    matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 3.5), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=14)
    ax.set_xticks([0, 1], ["not sick", "sick"])
    ax.set_yticks([0, 1], ["not sick", "sick"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    ax.set_title(f"threshold {report['threshold']:.3f}")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion.png")
    plt.close(fig)


def seen_in_training(model_dir: Path) -> set[str]:
    split_file = Path(model_dir) / SPLIT_FILE
    if not split_file.is_file():
        return set()
    split = json.loads(split_file.read_text())
    return set(split.get("train", [])) | set(split.get("validation", []))


def evaluate_bundle(
    model_dir: Path,
    data_dir: Path,
    *,
    out: Path | None,
    include_training_files: bool,
    seed: int,
    yamnet_model: Path | None,
    yamnet_url: str | None = None,
    inception_weights: str = "imagenet",
    cache_dir: Path | None,
    default_out_root: Path,
    progress: bool = True,
) -> dict[str, Any]:
    from ml.model import load_model

    manifest = read_manifest(model_dir)
    model = load_model(
        model_dir,
        inception_weights=inception_weights,
        yamnet_model=yamnet_model,
        yamnet_url=yamnet_url,
    )
    examples = load_dataset(data_dir)
    seen = set() if include_training_files else seen_in_training(model_dir)
    held_out = [ex for ex in examples if ex.sha256 not in seen]
    if not held_out:
        raise ValueError("every recording in the data was used to train this bundle")
    data = extract(
        held_out,
        model.backbone.embed,
        model.sample_rate,
        {"bundle": fingerprint(model_dir)},
        cache_dir,
        progress,
    )
    scores = model.head.scores(data.features)
    card_metrics = manifest.card.get("metrics", {})
    rates = card_metrics.get("source_only", {}).get("positive_rate_by_source")
    if card_metrics.get("source_only", {}).get("rates_from") != "training data":
        rates = None
    report = evaluate(data.labels, scores, data.sources, manifest.threshold, seed, rates)
    skipped = len(examples) - len(held_out)
    report["evaluated_on"] = (
        f"{len(data.examples)} recordings of {data_dir.name}"
        + (f" ({skipped} used in training were left out)" if skipped else "")
        + (f"; {len(data.rejected)} unusable" if data.rejected else "")
    )
    if not (Path(model_dir) / SPLIT_FILE).is_file() and not include_training_files:
        report["evaluated_on"] += (
            "; WARNING: the bundle records no training split, so these recordings may "
            "include its training data and the numbers may be optimistic"
        )
    report["model"] = {"name": manifest.name, "version": manifest.version}
    out = out or default_out_root / f"{manifest.name}-{manifest.version}"
    write_outputs(out, report, data.labels, scores, data.sources)
    report["outputs"] = str(out)
    return report
