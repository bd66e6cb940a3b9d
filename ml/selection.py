"""Model selection by repeated grouped cross-validation, on within-source AUC.

The data's label is confounded with its recording source (covid19-cough: 8 kHz
phone calls, mostly positive, against 48 kHz messenger audio, mostly negative),
so overall AUC rewards a model for recognising the channel. Every choice here
(regularisation, and in ``scripts/model_selection.py`` features, pooling and
preprocessing) is made on the *mean within-source AUC*: for each fold, the AUC
within each source, averaged over sources; then averaged over folds.

Folds are stratified by label x source and grouped by content hash, so a
recording present twice never sits on both sides of a fold. The head is
scikit-learn's logistic regression (balanced class weights) on standardised
features; it is the same linear model as a bundle's :class:`ml.bundle.Head`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml.bundle import Head
from shared.metrics import roc_auc

FOLDS = 5
REPEATS = 2
C_GRID = (1e-3, 1e-2, 1e-1, 1.0)
MAX_ITER = 3000

Fold = tuple[np.ndarray, np.ndarray]


def strata(labels: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """One stratum per label x source."""
    return np.array([f"{int(y)}|{s}" for y, s in zip(labels, sources, strict=True)])


def cv_folds(
    labels: np.ndarray,
    sources: np.ndarray,
    groups: Sequence[str] | np.ndarray,
    folds: int = FOLDS,
    repeats: int = REPEATS,
    seed: int = 0,
) -> list[Fold]:
    """``repeats`` x ``folds`` (train, test) index pairs: stratified by label x source,
    never splitting a group (a content hash). Fewer folds where a stratum is small."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = strata(np.asarray(labels), np.asarray(sources))
    _, counts = np.unique(y, return_counts=True)
    k = int(min(folds, counts.min()))
    if k < 2:
        raise ValueError(
            "cross-validation needs at least 2 recordings of each label in each source"
        )
    out: list[Fold] = []
    for r in range(repeats):
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed + r)
        out.extend(splitter.split(np.zeros(len(y)), y, np.asarray(groups)))
    return out


def within_source_aucs(
    labels: np.ndarray, scores: np.ndarray, sources: np.ndarray
) -> dict[str, float]:
    """AUC within each source that has both labels."""
    labels, scores, sources = np.asarray(labels), np.asarray(scores), np.asarray(sources)
    out = {}
    for s in sorted(set(sources.tolist())):
        auc = roc_auc(labels[sources == s], scores[sources == s])
        if auc is not None:
            out[str(s)] = auc
    return out


def mean_within_source(aucs: dict[str, float]) -> float | None:
    return float(np.mean(list(aucs.values()))) if aucs else None


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    return mean, scale


def fit_logistic(
    x: np.ndarray, y: np.ndarray, c: float, standardise: bool = True, max_iter: int = MAX_ITER
) -> Head:
    """Balanced logistic regression on standardised features, as a bundle head."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64)
    if standardise:
        mean, scale = standardiser(x)
    else:
        mean, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    model = LogisticRegression(C=c, class_weight="balanced", max_iter=max_iter)
    model.fit((x - mean) / scale, y)
    return Head(
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        weights=model.coef_[0].astype(np.float32),
        bias=float(model.intercept_[0]),
    )


def row_space(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets of (standardised) rows in coordinates of the training rows' span.

    An L2-penalised linear model's weights lie in the span of its training rows, and
    these coordinates are an isometry of that span (eigenvectors of the Gram
    matrix), so logistic regression fitted here gives the same logits as on the
    original columns (to the optimiser's tolerance), while the optimiser works on n_train columns
    instead of thousands: cross-validating a 4,126-feature option takes seconds a fold.
    """
    gram = train @ train.T
    eigenvalues, vectors = np.linalg.eigh(gram)
    keep = eigenvalues > eigenvalues.max() * 1e-10
    root = np.sqrt(eigenvalues[keep])
    vectors = vectors[:, keep]
    return vectors * root, (test @ train.T) @ vectors / root


def logits(head: Head, x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.float64) - head.mean) / head.scale) @ head.weights + head.bias


def per_source_standardise(
    x_train: np.ndarray, s_train: np.ndarray, x_test: np.ndarray, s_test: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each source's features standardised by that source's training rows. Needs the
    source of every recording: possible in research, not at serving time."""
    a, b = x_train.astype(np.float64).copy(), x_test.astype(np.float64).copy()
    for s in set(s_train.tolist()):
        mean, scale = standardiser(a[s_train == s])
        a[s_train == s] = (a[s_train == s] - mean) / scale
        b[s_test == s] = (b[s_test == s] - mean) / scale
    return a, b


@dataclass
class CVResult:
    """One option's cross-validated figures at one C."""

    c: float
    fold_within: list[dict[str, float]] = field(default_factory=list)
    fold_overall: list[float] = field(default_factory=list)
    oof_logits: np.ndarray | None = None  # (repeats, n): each repeat scores every row once

    def _per_fold(self) -> list[float]:
        values = [mean_within_source(f) for f in self.fold_within]
        return [v for v in values if v is not None]

    @property
    def mean_within(self) -> float:
        return float(np.mean(self._per_fold()))

    @property
    def sd_within(self) -> float:
        return float(np.std(self._per_fold()))

    def by_source(self) -> dict[str, tuple[float, float]]:
        sources = sorted({s for f in self.fold_within for s in f})
        return {
            s: (
                float(np.mean([f[s] for f in self.fold_within if s in f])),
                float(np.std([f[s] for f in self.fold_within if s in f])),
            )
            for s in sources
        }

    def summary(self) -> dict[str, Any]:
        return {
            "C": self.c,
            "mean_within_source_auc": self.mean_within,
            "sd_within_source_auc": self.sd_within,
            "by_source": {s: {"mean": m, "sd": sd} for s, (m, sd) in self.by_source().items()},
            "overall": _mean_sd(self.fold_overall),
            "folds": len(self.fold_within),
        }


def _mean_sd(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sd over the folds where the AUC is defined (a fold holding one label
    has none): never NaN, which a card's JSON and PostgreSQL's JSON type refuse."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return {"mean": None, "sd": None}
    return {"mean": float(np.mean(finite)), "sd": float(np.std(finite))}


def cross_validate(
    x: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray,
    folds: list[Fold],
    c_grid: Sequence[float] = C_GRID,
    per_source: bool = False,
) -> list[CVResult]:
    """Every C of ``c_grid`` on every fold; out-of-fold logits kept per repeat."""
    x = np.asarray(x, dtype=np.float64)
    labels, sources = np.asarray(labels), np.asarray(sources)
    results = [CVResult(c) for c in c_grid]
    k = _folds_per_repeat(folds, len(labels))
    for r in results:
        r.oof_logits = np.full((len(folds) // k, len(labels)), np.nan)
    for i, (train, test) in enumerate(folds):
        xa, xb = x[train], x[test]
        if per_source:
            xa, xb = per_source_standardise(xa, sources[train], xb, sources[test])
        mean, scale = standardiser(xa)
        za, zb = row_space((xa - mean) / scale, (xb - mean) / scale)
        for r in results:
            z = logits(fit_logistic(za, labels[train], r.c, standardise=False), zb)
            assert r.oof_logits is not None
            r.oof_logits[i // k, test] = z
            r.fold_within.append(within_source_aucs(labels[test], z, sources[test]))
            r.fold_overall.append(roc_auc(labels[test], z) or float("nan"))
    return results


def _folds_per_repeat(folds: list[Fold], n: int) -> int:
    """How many folds make one repeat (their test parts cover the rows once)."""
    covered = 0
    for i, (_, test) in enumerate(folds):
        covered += len(test)
        if covered >= n:
            return i + 1
    return len(folds)


def best(results: list[CVResult]) -> CVResult:
    """Highest mean within-source AUC; on a tie, the stronger regularisation."""
    return max(results, key=lambda r: (round(r.mean_within, 6), -r.c))


def platt(oof_logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling ``p = sigmoid(a * z + b)`` fitted on out-of-fold logits (every
    repeat's, stacked): no recording is calibrated on a score its own fit gave it."""
    from sklearn.linear_model import LogisticRegression

    z = np.asarray(oof_logits, dtype=np.float64)
    y = np.tile(np.asarray(labels), z.shape[0]) if z.ndim == 2 else np.asarray(labels)
    model = LogisticRegression(C=1e6, max_iter=MAX_ITER)  # unregularised, unweighted
    model.fit(z.reshape(-1, 1), y)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def fold_platt(head: Head, a: float, b: float) -> Head:
    """The calibrated head: ``a * (w.x + c) + b`` is still linear, so the bundle's
    head format and serving code are unchanged."""
    return Head(
        mean=head.mean,
        scale=head.scale,
        weights=(head.weights.astype(np.float64) * a).astype(np.float32),
        bias=float(head.bias * a + b),
    )


TEST_FRACTION = 0.2
SEED = 0


def split_test(
    examples: Sequence[Any], fraction: float = TEST_FRACTION, seed: int = SEED
) -> tuple[list[Any], list[Any]]:
    """(the rest, the test split): stratified by label x source, by content hash. The
    test split is held out of every choice, and only measured on at the end."""
    from ml.splits import stratified_split

    parts = stratified_split(examples, fraction, seed)
    return parts["train"], parts["test"]
