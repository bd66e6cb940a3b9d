"""``tussis evaluate`` and the report behind it, on held-out data: ROC AUC with a
bootstrap 95 % interval, accuracy, sensitivity and specificity at the bundle's
threshold, Brier score and expected calibration error, overall and within each
recording source; beside them what the source alone achieves, what loudness
alone achieves, and a channel probe (how well the model's score and features
predict the recording source rather than the label).

The metrics themselves are ``shared.metrics``: one implementation for this
command and for the service's batch evaluation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.bundle import SPLIT_FILE, fingerprint, read_manifest
from ml.datasets import load_dataset
from ml.features import extract
from ml.splits import deduplicate
from shared import plots
from shared.metrics import (
    bootstrap_auc_ci,
    brier,
    calibration_bins,
    expected_calibration_error,
    roc_auc,
    summarise,
)

__all__ = ["channel_probe", "evaluate", "evaluate_bundle", "format_report", "roc_auc"]

log = logging.getLogger(__name__)

# The channel probe flags a model whose score predicts the recording source this
# much better (in AUC) than it predicts the label.
PROBE_MARGIN = 0.1
PROBE_FOLDS = 5


def source_prevalence(
    labels: Sequence[int] | np.ndarray, sources: Sequence[str] | np.ndarray
) -> dict[str, float]:
    labels_arr, sources_arr = np.asarray(labels), np.asarray(sources)
    return {
        str(s): float(labels_arr[sources_arr == s].mean())
        for s in sorted(set(sources_arr.tolist()))
    }


def _cross_validated_auc(x: np.ndarray, target: np.ndarray, seed: int, c: float) -> float | None:
    """AUC of a logistic regression predicting ``target`` (0/1) from ``x``, every
    item scored by a fit that did not see it (stratified k-fold)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(target, minlength=2)
    folds = int(min(PROBE_FOLDS, counts.min()))
    if folds < 2:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    p = cross_val_predict(model, x, target, cv=cv, method="predict_proba")[:, 1]
    return roc_auc(target, p)


def channel_probe(
    labels: np.ndarray,
    scores: np.ndarray,
    sources: np.ndarray,
    features: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any] | None:
    """How well the model's score (and its features) predict the recording source,
    beside how well the score predicts the label: a model that learned the channel
    predicts the source far better. ``None`` with fewer than two sources.

    With more than two sources, the probe tells the most common source from the rest.
    """
    labels, scores, sources = np.asarray(labels), np.asarray(scores), np.asarray(sources)
    names, counts = np.unique(sources, return_counts=True)
    if len(names) < 2:
        return None
    reference = str(names[int(np.argmax(counts))])
    target = (sources == reference).astype(np.int64)
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    z = np.log(p / (1 - p)).reshape(-1, 1)
    to_source = _cross_validated_auc(z, target, seed, c=1.0)
    to_label = roc_auc(labels, scores)
    from_features = (
        _cross_validated_auc(np.asarray(features, np.float64), target, seed, c=0.01)
        if features is not None and len(features) == len(target)
        else None
    )
    flagged = (
        to_source is not None
        and to_source >= (to_label if to_label is not None else 0.5) + PROBE_MARGIN
    )
    return {
        "source": reference,
        "score_to_source_auc": to_source,
        "score_to_label_auc": to_label,
        "features_to_source_auc": from_features,
        "flagged": bool(flagged),
        "message": (
            f"the score predicts the recording source (AUC {to_source:.2f}) far better than "
            f"the label (AUC {to_label or 0.5:.2f}): it has learned the channel"
            if flagged
            else "the score does not predict the source much better than the label"
        ),
    }


def calibration_summary(
    labels: np.ndarray, scores: np.ndarray, sources: np.ndarray
) -> dict[str, Any]:
    """Brier score, expected calibration error and reliability bins, overall and per source."""
    labels, scores, sources = np.asarray(labels), np.asarray(scores), np.asarray(sources)

    def one(mask: np.ndarray) -> dict[str, Any]:
        return {
            "n": int(mask.sum()),
            "brier": brier(labels[mask], scores[mask]),
            "ece": expected_calibration_error(labels[mask], scores[mask]),
            "mean_score": float(scores[mask].mean()) if mask.any() else None,
            "positive_rate": float(labels[mask].mean()) if mask.any() else None,
            "bins": calibration_bins(labels[mask], scores[mask]),
        }

    return {
        "overall": one(np.ones(len(labels), bool)),
        "by_source": {str(s): one(sources == s) for s in sorted(set(sources.tolist()))},
    }


def cross_validated_baseline(
    x: np.ndarray, labels: np.ndarray, sources: np.ndarray, seed: int, what: str
) -> dict[str, Any]:
    """A logistic regression on ``x`` alone, cross-validated within these recordings:
    its AUC overall and within each source."""
    labels, sources = np.asarray(labels), np.asarray(sources)
    x = np.asarray(x, np.float64)
    out: dict[str, Any] = {"features": what, "by_source": {}}
    out["overall"] = _cross_validated_auc(x, labels, seed, c=1.0)
    for s in sorted(set(sources.tolist())):
        mask = sources == s
        out["by_source"][str(s)] = _cross_validated_auc(x[mask], labels[mask], seed, c=1.0)
    out["method"] = f"logistic regression, {PROBE_FOLDS}-fold cross-validated on these recordings"
    return out


def evaluate(
    labels: np.ndarray,
    scores: np.ndarray,
    sources: np.ndarray,
    threshold: float,
    seed: int,
    source_rates: dict[str, float] | None = None,
    features: np.ndarray | None = None,
) -> dict[str, Any]:
    """The full report. ``source_rates`` (share of positives per source, from the
    training data) defines the source-only classifier; without it the evaluation
    data's own rates are used, which flatters that baseline. ``features``: the
    model's own features, for the channel probe."""
    labels, scores, sources = np.asarray(labels), np.asarray(scores), np.asarray(sources)
    rates = source_rates or source_prevalence(labels, sources)
    baseline = np.array([rates.get(str(s), 0.5) for s in sources])
    interval = bootstrap_auc_ci(labels, baseline, seed)
    return {
        "threshold": threshold,
        "overall": summarise(labels, scores, threshold, seed),
        "by_source": {
            str(s): summarise(labels[sources == s], scores[sources == s], threshold, seed)
            for s in sorted(set(sources.tolist()))
        },
        "source_only": {
            "auc": roc_auc(labels, baseline),
            "auc_ci": list(interval) if interval else None,
            "positive_rate_by_source": rates,
            "rates_from": "training data" if source_rates else "evaluation data",
        },
        "channel_probe": channel_probe(labels, scores, sources, features, seed),
        "calibration": calibration_summary(labels, scores, sources),
    }


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def format_report(report: dict[str, Any]) -> str:
    lines = [f"threshold {report['threshold']:.3f}"]
    header = (
        f"{'group':<14}{'n':>6}{'pos':>6}  {'AUC [95% CI]':<24}{'acc':>7}{'sens':>7}{'spec':>7}"
        f"{'Brier':>7}{'ECE':>7}"
    )
    lines.append(header)
    groups = [("overall", report["overall"]), *report["by_source"].items()]
    for name, m in groups:
        ci = m["auc_ci"]
        auc = f"{_fmt(m['auc'])} [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else _fmt(m["auc"])
        lines.append(
            f"{name:<14}{m['n']:>6}{m['positives']:>6}  {auc:<24}"
            f"{_fmt(m['accuracy']):>7}{_fmt(m['sensitivity']):>7}{_fmt(m['specificity']):>7}"
            f"{_fmt(m['brier']):>7}{_fmt(m['ece']):>7}"
        )
    so = report["source_only"]
    ci = so["auc_ci"]
    extra = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else ""
    lines.append(f"source alone  AUC {_fmt(so['auc'])}{extra} (rates from {so['rates_from']})")
    for key, name in (("loudness_only", "loudness alone"), ("trimming_only", "trimming alone")):
        if baseline := report.get(key):
            per = ", ".join(f"{s} {_fmt(v)}" for s, v in baseline["by_source"].items())
            lines.append(f"{name:<14} AUC {_fmt(baseline['overall'])}; within source: {per}")
    probe = report.get("channel_probe")
    if probe:
        lines.append(
            f"channel probe: score -> source AUC {_fmt(probe['score_to_source_auc'])}, "
            f"score -> label AUC {_fmt(probe['score_to_label_auc'])}, "
            f"features -> source AUC {_fmt(probe['features_to_source_auc'])}"
        )
        if probe["flagged"]:
            lines.append(f"WARNING: {probe['message']}")
    else:
        lines.append("channel probe: n/a (the recordings come from one source)")
    c = report["overall"]["confusion"]
    lines.append(f"confusion (overall): tp={c['tp']} fn={c['fn']} tn={c['tn']} fp={c['fp']}")
    return "\n".join(lines)


def write_outputs(
    out_dir: Path, report: dict, labels: np.ndarray, scores: np.ndarray, sources: np.ndarray
) -> None:
    """report.json, roc.png, confusion.png and calibration.png (the reliability diagram)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    groups = [("overall", np.ones(len(labels), bool))]
    groups += [(str(s), sources == s) for s in sorted(set(sources.tolist()))]
    curves = [(name, labels[mask], scores[mask]) for name, mask in groups]
    (out_dir / "roc.png").write_bytes(plots.roc_png(curves, "ROC on held-out recordings"))
    (out_dir / "calibration.png").write_bytes(
        plots.calibration_png(curves, float(report["threshold"]))
    )

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


LOUDNESS_SPEC = {"name": "loudness", "rate": 16000}
TRIMMING_SPEC = {"name": "trimming", "rate": 16000}


def _of(examples: Sequence[Any], embed: Any, spec: dict, cache_dir: Path | None) -> np.ndarray:
    data = extract(examples, embed, 16000, spec, cache_dir, False)
    if len(data.examples) != len(examples):
        raise ValueError("some recordings could not be decoded for a baseline")
    return data.features


def loudness_of(examples: Sequence[Any], cache_dir: Path | None) -> np.ndarray:
    """RMS and peak dBFS of each example, in order, from the decoded recording
    before any preprocessing."""
    from ml.acoustic import loudness

    return _of(examples, lambda ws: [loudness(w) for w in ws], LOUDNESS_SPEC, cache_dir)


def trimming_of(examples: Sequence[Any], cache_dir: Path | None) -> np.ndarray:
    """How each example was cut (``ml.acoustic.TRIMMING``), in order."""
    from ml.acoustic import trimming

    return _of(examples, lambda ws: [trimming(w, 16000) for w in ws], TRIMMING_SPEC, cache_dir)


def confound_baselines(
    examples: Sequence[Any],
    labels: np.ndarray,
    sources: np.ndarray,
    cache_dir: Path | None,
    seed: int = 0,
) -> dict[str, Any]:
    """What how a recording was made says of its label: loudness alone (RMS and
    peak level) and trimming alone (duration, share of active frames, crest
    factor, envelope spread), each a logistic regression cross-validated within
    these recordings. A model no better than these within a source may be
    detecting how the recordings were collected, not the cough."""
    return {
        "loudness_only": cross_validated_baseline(
            loudness_of(examples, cache_dir), labels, sources, seed, "RMS and peak level (dBFS)"
        ),
        "trimming_only": cross_validated_baseline(
            trimming_of(examples, cache_dir),
            labels,
            sources,
            seed,
            "duration, share of active frames, crest factor, envelope spread",
        ),
    }


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
    distinct, hygiene = deduplicate(examples)
    seen = set() if include_training_files else seen_in_training(model_dir)
    held_out = [ex for ex in distinct if ex.sha256 not in seen]
    if not held_out:
        raise ValueError("every recording in the data was used to train this bundle")
    data = extract(
        held_out,
        model.embed,
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
    report = evaluate(
        data.labels, scores, data.sources, manifest.threshold, seed, rates, data.features
    )
    report.update(confound_baselines(data.examples, data.labels, data.sources, cache_dir, seed))
    report["data_hygiene"] = hygiene
    skipped = len(distinct) - len(held_out)
    dropped = hygiene["duplicate_rows_dropped"] + hygiene["rows_with_conflicting_labels"]
    report["evaluated_on"] = (
        f"{len(data.examples)} distinct recordings of {data_dir.name}"
        + (f" ({skipped} used in training were left out)" if skipped else "")
        + (
            f"; {hygiene['duplicate_rows_dropped']} duplicate rows and "
            f"{hygiene['contents_with_both_labels_dropped']} contents under both labels dropped"
            if dropped
            else ""
        )
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
