"""An evaluation's pictures, ROC curves and the reliability diagram, as PNG bytes:
the same drawing for a batch's evaluation in the API and for ``tussis evaluate``.

matplotlib (Agg, no display) is imported inside each function: only a request for
a picture loads it into the API process. The numbers come from shared.metrics."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from shared import metrics

Curve = tuple[str, np.ndarray, np.ndarray]  # (name, 0/1 labels, scores)
MAX_CURVES = 9  # overall and eight groups; more lines are unreadable


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # A Figure of its own (not pyplot's global state): safe in a threaded server.
    fig = Figure(figsize=(width, height), dpi=100)
    return fig, fig.add_subplot()


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def roc_png(curves: Sequence[Curve], title: str = "ROC of the labelled items") -> bytes:
    """ROC curves of the curves that hold both labels, with AUC and n in the legend."""
    fig, ax = _figure(5.5, 5)
    for name, labels, scores in curves[:MAX_CURVES]:
        auc = metrics.roc_auc(labels, scores)
        if auc is None:
            continue
        fpr, tpr = metrics.roc_points(labels, scores)
        width = 2.2 if name == "overall" else 1.2
        ax.plot(fpr, tpr, linewidth=width, label=f"{name} (AUC {auc:.2f}, n={len(labels)})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def calibration_png(curves: Sequence[Curve], threshold: float) -> bytes:
    """Reliability diagram: per bin of the score (ten equal-width bins), the share of
    positives against the mean score; points on the diagonal are calibrated."""
    fig, ax = _figure(5.5, 5)
    for name, labels, scores in curves[:MAX_CURVES]:
        points = metrics.calibration_bins(labels, scores)
        if not points:
            continue
        ece = metrics.expected_calibration_error(labels, scores)
        brier = metrics.brier(labels, scores)
        ax.plot(
            [p["mean_score"] for p in points],
            [p["positive_rate"] for p in points],
            "o-",
            linewidth=2.2 if name == "overall" else 1.2,
            markersize=4,
            label=f"{name} (Brier {brier:.3f}, ECE {ece:.3f}, n={len(labels)})",
        )
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    ax.axvline(threshold, color="black", linewidth=0.8, linestyle="--", label="threshold")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("mean score in the bin")
    ax.set_ylabel("share of positive labels")
    ax.set_title("Reliability of the score")
    ax.legend(loc="upper left", fontsize=7)
    return _png(fig)


def timeline_png(
    ten_minutes: Sequence[dict[str, Any]], hourly: Sequence[dict[str, Any]], title: str = ""
) -> bytes:
    """A long recording's coughs per 10 minutes (bars) and per hour (steps), from the bins
    its result carries (``ml.rates``); the x axis is clock time when the bins have it."""
    fig, ax = _figure(9, 3.6)
    clock = bool(ten_minutes) and "start" in ten_minutes[0]

    def x_of(row: dict[str, Any]) -> float:
        return float(row["start_s"]) / 3600.0

    if ten_minutes:
        ax.bar(
            [x_of(r) for r in ten_minutes],
            [r["count"] for r in ten_minutes],
            width=1 / 6,
            align="edge",
            color="#4a7ab5",
            label="coughs per 10 min",
        )
    if hourly:
        last = hourly[-1]
        # The last hour ends where the recording does (its bin is partly covered).
        end = max(0.0, float(last["start_s"])) + float(last.get("covered_s", 3600.0))
        xs = [x_of(r) for r in hourly] + [max(x_of(last) + 1e-3, end / 3600.0)]
        ys = [r["count"] for r in hourly]
        ax.stairs(ys, xs, color="#c0392b", linewidth=1.8, label="coughs per hour")
    if clock:
        ticks = [x_of(r) for r in hourly]
        ax.set_xticks(ticks, [str(r["start"])[11:16] for r in hourly], rotation=45)
        ax.set_xlabel("clock time (start of the recording's time zone)")
    else:
        ax.set_xlabel("hours from the start of the recording")
    ax.set_ylabel("coughs")
    ax.set_title(title[:80])
    ax.legend(loc="upper right")
    return _png(fig)


def count_agreement_png(
    annotated: Sequence[float], detected: Sequence[float], unit: str = "episodes per hour"
) -> bytes:
    """Counts against their annotation, one point per period: detected against
    annotated (the diagonal is perfect agreement), and Bland-Altman (the difference
    against the mean, with the mean difference and its 95 % limits of agreement)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    a = np.asarray(annotated, dtype=np.float64)
    d = np.asarray(detected, dtype=np.float64)
    fig = Figure(figsize=(10, 4.6), dpi=100)
    left, right = fig.subplots(1, 2)
    top = float(max(a.max(initial=0.0), d.max(initial=0.0))) * 1.05 + 1.0
    left.scatter(a, d, s=18, alpha=0.8)
    left.plot([0, top], [0, top], ":", color="grey", label="perfect agreement")
    if len(a) >= 3 and a.std() > 0 and d.std() > 0:
        r = float(np.corrcoef(a, d)[0, 1])
        left.set_title(f"Detected against annotated (r = {r:.3f}, n = {len(a)})")
    else:
        left.set_title(f"Detected against annotated (n = {len(a)})")
    left.set_xlim(0, top)
    left.set_ylim(0, top)
    left.set_xlabel(f"annotated {unit}")
    left.set_ylabel(f"detected {unit}")
    left.legend(loc="upper left", fontsize=8)
    mean, diff = (a + d) / 2, d - a
    right.scatter(mean, diff, s=18, alpha=0.8)
    if len(diff):
        bias, sd = float(diff.mean()), float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
        right.axhline(bias, color="black", linewidth=1, label=f"mean difference {bias:+.1f}")
        for limit in (bias - 1.96 * sd, bias + 1.96 * sd):
            right.axhline(limit, color="black", linewidth=0.8, linestyle="--")
        right.plot([], [], "k--", linewidth=0.8, label=f"95 % limits ±{1.96 * sd:.1f}")
    right.axhline(0, color="grey", linewidth=0.6, linestyle=":")
    right.set_xlabel(f"mean of annotated and detected {unit}")
    right.set_ylabel("detected - annotated")
    right.set_title("Bland-Altman")
    right.legend(loc="upper left", fontsize=8)
    return _png(fig)
