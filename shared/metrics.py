"""The one implementation of the evaluation metrics, shared by ``tussis evaluate``
(ml/evaluation.py) and the service's batch evaluation (api/evaluation.py).

Labels are 0/1 arrays (1 = the model's positive label), scores are floats in
[0, 1] (the model's "probability of sick"). Everything is numpy, scipy and
scikit-learn; nothing here plots or touches a database, so both the API process
and the training commands can import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve

BOOTSTRAP_ROUNDS = 2000
# The bootstrap draws its resamples this many items at a time (a few arrays of this
# size: tens of MB), so a large cohort never needs rounds x n memory at once.
_BOOTSTRAP_CELLS = 2_000_000

ArrayLike = np.ndarray | Sequence[float] | Sequence[int]


def _arrays(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels {y.shape} and scores {s.shape} must be 1-d and equally long")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.any()) and not bool(y.all())


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """ROC AUC (tied scores count half); ``None`` when one class is absent."""
    y, s = _arrays(labels, scores)
    if not _both_classes(y):
        return None
    return float(roc_auc_score(y, s))


def bootstrap_auc_ci(
    labels: ArrayLike,
    scores: ArrayLike,
    seed: int = 0,
    rounds: int = BOOTSTRAP_ROUNDS,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the ROC AUC: ``rounds`` resamples of the items
    with replacement (``rng.integers(0, n, n)`` each, numpy's ``default_rng(seed)``);
    resamples lacking a class are skipped. ``None`` when the data lack a class.

    Vectorised with the Mann-Whitney U statistic, AUC = U / (n_pos * n_neg), ties
    counting half. The scores are ranked once (``rankdata``, dense: one rank per
    distinct score); a resample is then just how many times it drew each item, so
    per resample and per distinct score we count positives and negatives drawn, and
    U = sum over scores of positives x (negatives below + half the negatives tied).
    That is a handful of (rounds x distinct scores) array operations, no per-resample
    sort."""
    y, s = _arrays(labels, scores)
    if not _both_classes(y):
        return None
    return _percentile_interval(_resampled_aucs(y, s, seed, rounds, _block(len(y), s)), level)


def _percentile_interval(values: np.ndarray, level: float) -> tuple[float, float] | None:
    """The central ``level`` interval of the resampled ``values`` that are defined (a
    resample lacking a class gives NaN); None when none is."""
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def _block(n: int, *scores: np.ndarray) -> int:
    """Resamples drawn at a time: a few arrays of about ``_BOOTSTRAP_CELLS`` cells."""
    distinct = max(len(np.unique(s)) for s in scores)
    return max(1, _BOOTSTRAP_CELLS // max(n, 2 * distinct))


def _resampled_aucs(y: np.ndarray, s: np.ndarray, seed: int, rounds: int, block: int) -> np.ndarray:
    """The AUC of each of ``rounds`` resamples (NaN where one lacks a class). The
    draws depend only on ``seed``, ``rounds``, ``block`` and the number of items, so
    two scores of the same items resampled with the same arguments are paired."""
    n = len(y)
    ranks = rankdata(s, method="dense").astype(np.int64) - 1
    distinct = int(ranks.max()) + 1
    # Each item's cell in a per-resample table of (label, distinct score) counts.
    cell = y * distinct + ranks
    rng = np.random.default_rng(seed)
    values: list[np.ndarray] = []
    done = 0
    while done < rounds:
        size = min(block, rounds - done)
        drawn = rng.integers(0, n, (size, n))
        keys = cell[drawn] + (np.arange(size) * 2 * distinct)[:, None]
        counts = np.bincount(keys.ravel(), minlength=size * 2 * distinct)
        counts = counts.reshape(size, 2, distinct).astype(np.float64)
        neg, pos = counts[:, 0, :], counts[:, 1, :]
        below = np.cumsum(neg, axis=1) - neg
        u = (pos * (below + 0.5 * neg)).sum(axis=1)
        positives, negatives = pos.sum(axis=1), neg.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            values.append(
                np.where((positives > 0) & (negatives > 0), u / (positives * negatives), np.nan)
            )
        done += size
    return np.concatenate(values)


def paired_bootstrap_auc_difference(
    labels: ArrayLike,
    first: ArrayLike,
    second: ArrayLike,
    seed: int = 0,
    rounds: int = BOOTSTRAP_ROUNDS,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of AUC(second) - AUC(first) over the same items:
    each resample (``rng.integers(0, n, n)``, ``default_rng(seed)``) draws the same
    items for both scores. ``None`` when the data lack a class."""
    y, a = _arrays(labels, first)
    _, b = _arrays(labels, second)
    if not _both_classes(y):
        return None
    block = _block(len(y), a, b)
    diffs = _resampled_aucs(y, b, seed, rounds, block) - _resampled_aucs(y, a, seed, rounds, block)
    return _percentile_interval(diffs, level)


def _midranks(x: np.ndarray) -> np.ndarray:
    return rankdata(x, method="average")


def delong_auc_difference(
    labels: ArrayLike, first: ArrayLike, second: ArrayLike, level: float = 0.95
) -> dict[str, Any] | None:
    """DeLong's test for two correlated ROC AUCs (DeLong, DeLong & Clarke-Pearson
    1988), in Sun & Xu's midrank form (2014): AUC(second) - AUC(first), its standard
    error, normal ``level`` interval, z and two-sided p value. No installed library
    (scikit-learn, scipy) has it. ``None`` when the data lack a class."""
    from scipy.stats import norm

    y, a = _arrays(labels, first)
    _, b = _arrays(labels, second)
    if not _both_classes(y):
        return None
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    aucs, v10, v01 = [], [], []
    for s in (a, b):
        x, z = s[pos], s[neg]
        tx, tz = _midranks(x), _midranks(z)
        txz = _midranks(np.concatenate([x, z]))
        aucs.append(float((txz[:m].sum() - m * (m + 1) / 2) / (m * n)))
        v10.append((txz[:m] - tx) / n)  # per positive: share of negatives below it
        v01.append(1.0 - (txz[m:] - tz) / m)  # per negative: share of positives above it
    s10 = np.cov(np.vstack(v10)) if m > 1 else np.zeros((2, 2))
    s01 = np.cov(np.vstack(v01)) if n > 1 else np.zeros((2, 2))
    cov = s10 / m + s01 / n
    variance = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    difference = aucs[1] - aucs[0]
    se = float(np.sqrt(max(variance, 0.0)))
    q = float(norm.ppf(0.5 + level / 2))
    if se > 0:
        z_value = difference / se
        p_value = float(2 * norm.sf(abs(z_value)))
    else:  # identical rankings: no difference, nothing to test
        z_value, p_value = 0.0, 1.0
    return {
        "auc_first": aucs[0],
        "auc_second": aucs[1],
        "difference": difference,
        "se": se,
        "ci": [difference - q * se, difference + q * se],
        "z": float(z_value),
        "p_value": p_value,
    }


def at_threshold(labels: ArrayLike, scores: ArrayLike, threshold: float) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity and the confusion matrix when a score at or
    above ``threshold`` is called positive; a rate is ``None`` where its denominator
    is zero."""
    y, s = _arrays(labels, scores)
    predicted = s >= threshold
    positive = y == 1
    tp = int((predicted & positive).sum())
    fn = int((~predicted & positive).sum())
    tn = int((~predicted & ~positive).sum())
    fp = int((predicted & ~positive).sum())
    n = tp + fn + tn + fp
    return {
        "accuracy": (tp + tn) / n if n else None,
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "confusion": {"tp": tp, "fn": fn, "tn": tn, "fp": fp},
    }


def brier(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """Mean squared difference between score and label; ``None`` for no items."""
    y, s = _arrays(labels, scores)
    if len(y) == 0:
        return None
    return float(brier_score_loss(y, s, pos_label=1))


def _bin_index(s: np.ndarray, bins: int) -> np.ndarray:
    # Equal-width bins of [0, 1]; a score of exactly 1.0 belongs to the last bin.
    return np.clip(np.floor(s * bins).astype(np.int64), 0, bins - 1)


def calibration_bins(labels: ArrayLike, scores: ArrayLike, bins: int = 10) -> list[dict]:
    """The reliability diagram's points: for each equal-width bin of the score on
    [0, 1] that holds items, its edges ``lo``/``hi``, item count ``n``, ``mean_score``
    and ``positive_rate`` (share of label 1). Empty bins are omitted."""
    y, s = _arrays(labels, scores)
    which = _bin_index(s, bins)
    counts = np.bincount(which, minlength=bins)
    score_sums = np.bincount(which, weights=s, minlength=bins)
    positive_sums = np.bincount(which, weights=y.astype(np.float64), minlength=bins)
    return [
        {
            "lo": b / bins,
            "hi": (b + 1) / bins,
            "n": int(counts[b]),
            "mean_score": float(score_sums[b] / counts[b]),
            "positive_rate": float(positive_sums[b] / counts[b]),
        }
        for b in range(bins)
        if counts[b]
    ]


def expected_calibration_error(
    labels: ArrayLike, scores: ArrayLike, bins: int = 10
) -> float | None:
    """Expected calibration error: the item-weighted mean, over the equal-width bins
    of :func:`calibration_bins`, of |positive rate - mean score|. ``None`` for no
    items."""
    points = calibration_bins(labels, scores, bins)
    total = sum(p["n"] for p in points)
    if not total:
        return None
    return float(sum(p["n"] * abs(p["positive_rate"] - p["mean_score"]) for p in points) / total)


def roc_points(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve's (false positive rate, true positive rate) at every distinct
    score; needs both classes."""
    y, s = _arrays(labels, scores)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr


def youden_threshold(labels: ArrayLike, scores: ArrayLike) -> float:
    """The score threshold (one of the scores, ``score >= t`` is positive) that
    maximises Youden's J = sensitivity + specificity - 1, the smallest such score on
    a tie; 0.5 when one class is absent (no threshold separates anything).

    One ``roc_curve`` pass, O(n log n). J is computed as sensitivity + specificity -
    1 from the counts, in that order, so float ties break exactly as the earlier
    loop over every distinct score did."""
    y, s = _arrays(labels, scores)
    if not _both_classes(y):
        return 0.5
    positives = int(y.sum())
    negatives = len(y) - positives
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    # Drop the leading "nothing is positive" point (threshold +inf); recover the
    # integer counts so J is the same float the per-threshold computation gives.
    tp = np.rint(tpr[1:] * positives)
    fp = np.rint(fpr[1:] * negatives)
    j = tp / positives + (negatives - fp) / negatives - 1.0
    # thresholds descend; reverse so argmax's first maximum is the smallest score.
    return float(thresholds[1:][::-1][int(np.argmax(j[::-1]))])


def summarise(
    labels: ArrayLike, scores: ArrayLike, threshold: float, seed: int = 0
) -> dict[str, Any]:
    """Every headline figure of one set of items: n, positives, negatives, auc,
    auc_ci ([lo, hi] bootstrap 95 % or ``None``), accuracy, sensitivity,
    specificity, confusion (at ``threshold``), brier and ece."""
    y, s = _arrays(labels, scores)
    interval = bootstrap_auc_ci(y, s, seed)
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "negatives": int(len(y) - y.sum()),
        "auc": roc_auc(y, s),
        "auc_ci": list(interval) if interval else None,
        **at_threshold(y, s, threshold),
        "brier": brier(y, s),
        "ece": expected_calibration_error(y, s),
    }


def group_only_auc(labels: ArrayLike, groups: Sequence[str] | np.ndarray) -> float | None:
    """How well the group alone (site, device, recording source) predicts the label:
    the ROC AUC when every item is scored by its group's share of positives.

    The shares come from the same items that are scored, which flatters this
    baseline (an upper bound of what a group-only classifier fitted elsewhere
    would reach). ``None`` when one class is absent."""
    y = np.asarray(labels).astype(np.int64)
    g = np.asarray(groups, dtype=object).astype(str)
    if len(g) != len(y):
        raise ValueError("labels and groups must be equally long")
    if not _both_classes(y):
        return None
    _, which = np.unique(g, return_inverse=True)
    rates = np.bincount(which, weights=y.astype(np.float64)) / np.bincount(which)
    return roc_auc(y, rates[which])
