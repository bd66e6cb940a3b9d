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
