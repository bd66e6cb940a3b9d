"""shared.metrics against independent computations: hand-checked tiny cases, brute
force over item pairs, and scikit-learn called directly on the same resamples."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from shared import metrics


def pairwise_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The AUC's definition: the share of (positive, negative) pairs ranked right,
    ties counting half."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def quadratic_youden(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold search tussis evaluate used before shared.metrics: every distinct
    score in ascending order, the first with the largest sensitivity + specificity - 1."""
    best, best_j = 0.5, -1.0
    for t in np.unique(scores):
        predicted = scores >= t
        tp = int((predicted & (labels == 1)).sum())
        fn = int((~predicted & (labels == 1)).sum())
        tn = int((~predicted & (labels == 0)).sum())
        fp = int((predicted & (labels == 0)).sum())
        sens = tp / (tp + fn) if tp + fn else None
        spec = tn / (tn + fp) if tn + fp else None
        j = (sens or 0.0) + (spec or 0.0) - 1.0
        if j > best_j:
            best, best_j = float(t), j
    return best


def random_cohort(seed: int, n: int, decimals: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores with some signal and many ties (scores rounded)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = np.round(np.clip(rng.random(n) * 0.7 + labels * 0.2, 0, 1), decimals)
    return labels, scores


def test_auc_hand_checked_with_ties() -> None:
    # pairs (pos, neg): (0.5, 0.2) right, (0.5, 0.5) tie, (0.8, 0.2) and (0.8, 0.5) right
    assert metrics.roc_auc([0, 0, 1, 1], [0.2, 0.5, 0.5, 0.8]) == pytest.approx(3.5 / 4)
    assert metrics.roc_auc([0, 1, 1, 0], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.5)
    assert metrics.roc_auc([0, 0, 1, 1], [0.3, 0.3, 0.3, 0.3]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pair_counting(seed: int) -> None:
    labels, scores = random_cohort(seed, 120, decimals=1)
    assert metrics.roc_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores))


def test_one_class_has_no_auc_interval_or_group_baseline() -> None:
    for labels in ([1, 1, 1], [0, 0, 0]):
        assert metrics.roc_auc(labels, [0.2, 0.4, 0.9]) is None
        assert metrics.bootstrap_auc_ci(labels, [0.2, 0.4, 0.9]) is None
        assert metrics.group_only_auc(labels, ["a", "b", "b"]) is None
        assert metrics.youden_threshold(labels, [0.2, 0.4, 0.9]) == 0.5
    assert metrics.roc_auc([], []) is None


def test_labels_other_than_zero_and_one_are_refused() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        metrics.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="equally long"):
        metrics.brier([0, 1], [0.1])


@pytest.mark.parametrize(("seed", "n"), [(0, 40), (1, 7), (2, 301)])
def test_bootstrap_interval_equals_sklearn_on_the_same_resamples(seed: int, n: int) -> None:
    labels, scores = random_cohort(seed, n, decimals=1)
    rounds = 300
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(rounds):
        idx = rng.integers(0, n, n)
        if len(np.unique(labels[idx])) == 2:
            aucs.append(roc_auc_score(labels[idx], scores[idx]))
    for level in (0.95, 0.8):
        tail = (1 - level) / 2 * 100
        expected = np.percentile(aucs, [tail, 100 - tail])
        got = metrics.bootstrap_auc_ci(labels, scores, seed=seed, rounds=rounds, level=level)
        assert got is not None
        assert got == pytest.approx(tuple(expected), abs=1e-12)


def test_bootstrap_blocks_do_not_change_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    labels, scores = random_cohort(3, 200)
    whole = metrics.bootstrap_auc_ci(labels, scores, seed=4, rounds=500)
    monkeypatch.setattr(metrics, "_BOOTSTRAP_CELLS", 200 * 7)  # blocks of 3 resamples
    assert metrics.bootstrap_auc_ci(labels, scores, seed=4, rounds=500) == whole


def test_at_threshold_hand_checked() -> None:
    got = metrics.at_threshold([1, 1, 1, 0, 0], [0.9, 0.5, 0.2, 0.5, 0.1], 0.5)
    # score >= 0.5 is positive: tp = 2 (0.9, 0.5), fn = 1 (0.2), fp = 1 (0.5), tn = 1
    assert got["confusion"] == {"tp": 2, "fn": 1, "tn": 1, "fp": 1}
    assert got["sensitivity"] == pytest.approx(2 / 3)
    assert got["specificity"] == pytest.approx(1 / 2)
    assert got["accuracy"] == pytest.approx(3 / 5)
    only_negatives = metrics.at_threshold([0, 0], [0.1, 0.9], 0.5)
    assert only_negatives["sensitivity"] is None
    assert only_negatives["specificity"] == 0.5


def test_brier_hand_checked() -> None:
    assert metrics.brier([1, 0, 1], [0.8, 0.4, 0.1]) == pytest.approx(
        (0.2**2 + 0.4**2 + 0.9**2) / 3
    )
    assert metrics.brier([0, 0], [0.0, 0.5]) == pytest.approx(0.125)
    assert metrics.brier([], []) is None


def test_calibration_bins_and_ece_hand_checked() -> None:
    labels = [0, 1, 1, 0, 1, 1]
    scores = [0.05, 0.12, 0.18, 0.55, 0.95, 1.0]
    points = metrics.calibration_bins(labels, scores, bins=5)
    # bins of width 0.2: [0, 0.2) holds three, [0.4, 0.6) one, [0.8, 1.0] two (1.0 included)
    assert [(p["lo"], p["hi"], p["n"]) for p in points] == [
        (0.0, 0.2, 3),
        (0.4, 0.6, 1),
        (0.8, 1.0, 2),
    ]
    assert points[0]["mean_score"] == pytest.approx((0.05 + 0.12 + 0.18) / 3)
    assert points[0]["positive_rate"] == pytest.approx(2 / 3)
    assert points[2]["mean_score"] == pytest.approx(0.975)
    expected_ece = (3 * abs(2 / 3 - 0.35 / 3) + 1 * abs(0 - 0.55) + 2 * abs(1 - 0.975)) / 6
    assert metrics.expected_calibration_error(labels, scores, bins=5) == pytest.approx(expected_ece)
    assert metrics.calibration_bins([], []) == []
    assert metrics.expected_calibration_error([], []) is None


@pytest.mark.parametrize("seed", range(8))
def test_youden_threshold_is_the_quadratic_search(seed: int) -> None:
    labels, scores = random_cohort(seed, 150, decimals=2 if seed % 2 else 1)
    assert metrics.youden_threshold(labels, scores) == quadratic_youden(labels, scores)


def test_youden_threshold_hand_checked() -> None:
    # Perfect separation: the smallest positive score splits the classes.
    assert metrics.youden_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8]) == 0.6


def test_roc_points_hand_checked() -> None:
    fpr, tpr = metrics.roc_points([0, 1, 1, 0], [0.1, 0.5, 0.5, 0.9])
    # thresholds +inf, 0.9, 0.5, 0.1
    assert fpr.tolist() == [0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.0, 1.0, 1.0]


def test_summarise_keys_and_values() -> None:
    labels, scores = random_cohort(11, 60)
    got = metrics.summarise(labels, scores, threshold=0.5, seed=2)
    assert {"n", "positives", "auc", "auc_ci", "sensitivity", "specificity", "brier"} <= set(got)
    assert "confusion" in got
    assert got["n"] == 60
    assert got["positives"] == int(labels.sum())
    assert got["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert got["auc_ci"] == list(metrics.bootstrap_auc_ci(labels, scores, seed=2) or ())
    assert got["brier"] == pytest.approx(float(np.mean((scores - labels) ** 2)))
    c = got["confusion"]
    assert c["tp"] == int(((scores >= 0.5) & (labels == 1)).sum())
    assert c["tp"] + c["fn"] + c["tn"] + c["fp"] == 60


def test_group_only_auc_hand_checked() -> None:
    # group a: 2 of 3 positive (rate 2/3); group b: 1 of 3 (rate 1/3).
    labels = [1, 1, 0, 1, 0, 0]
    groups = ["a", "a", "a", "b", "b", "b"]
    expected = pairwise_auc(np.array(labels), np.array([2 / 3] * 3 + [1 / 3] * 3))
    assert metrics.group_only_auc(labels, groups) == pytest.approx(expected)
    # pairs: a-pos vs b-neg right (2x2 = 4), a-pos vs a-neg tie (2), b-pos vs a-neg
    # wrong (1), b-pos vs b-neg tie (2): (4 + 0.5 * 4) / 9
    assert metrics.group_only_auc(labels, groups) == pytest.approx(6 / 9)
    # One group: the group says nothing.
    assert metrics.group_only_auc(labels, ["x"] * 6) == pytest.approx(0.5)


@pytest.mark.parametrize(("seed", "n"), [(0, 30), (1, 121), (2, 400)])
def test_delong_and_the_paired_bootstrap_match_reference_computations(seed: int, n: int) -> None:
    """Issue 25's paired comparison against independent computations on the same
    scores, with ties (scores rounded): DeLong from its O(m n) kernel definition, the
    bootstrap one resample at a time with scikit-learn."""
    from tests.api.test_evaluation import reference_bootstrap, reference_delong

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a = np.round(rng.random(n) + 0.3 * y, 1)
    b = np.round(rng.random(n) + 0.6 * y, 1)
    got = metrics.delong_auc_difference(y, a, b)
    assert got is not None
    difference, se = reference_delong(y, a, b)
    assert got["auc_first"] == pytest.approx(roc_auc_score(y, a))
    assert got["auc_second"] == pytest.approx(roc_auc_score(y, b))
    assert got["difference"] == pytest.approx(difference)
    assert got["se"] == pytest.approx(se)
    assert got["p_value"] == pytest.approx(2 * (1 - _normal_cdf(abs(difference / se))))
    rounds = 300
    assert metrics.paired_bootstrap_auc_difference(y, a, b, 0, rounds) == pytest.approx(
        reference_bootstrap(y, a, b, rounds)
    )
    # The same score twice: no difference, nothing to test.
    same = metrics.delong_auc_difference(y, a, a)
    assert same is not None and same["difference"] == 0 and same["p_value"] == 1.0


def _normal_cdf(x: float) -> float:
    import math

    return 0.5 * (1 + math.erf(x / math.sqrt(2)))
