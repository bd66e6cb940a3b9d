"""A finished batch's evaluation, computed once in a worker and stored (shared/evaluations.py):
its labelled items against their scores (AUC with a bootstrap interval, sensitivity
and specificity at the bundle's threshold, Brier score, the same per group, the
group-only baseline) and its ROC and reliability diagrams as PNG. The metrics are
shared.metrics, the same code as ``tussis evaluate``; the pictures shared.plots.

The work is bounded: one pass to split the items into groups, figures (each with a
2,000-round bootstrap) for at most :data:`MAX_GROUPS` groups, the largest, and the
others counted in ``groups_omitted``. The API answers from the stored row and never
computes (docs/batches.md, Evaluate a labelled batch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from shared import batches, evaluations, jobs
from shared.model_registry import ModelNote
from shared.tables import Batch, BatchStatus, JobStatus
from worker.runtime import Runtime

log = logging.getLogger("tussis.worker")

GATE_REFUSAL = "no_cough_detected"
EXAMPLES = 5  # label errors shown by path
DEFAULT_LABELS = ("not sick", "sick")  # what a bundle without "labels" means (ml/bundle.py)
BOOTSTRAP_SEED = 0  # fixed: the same batch always reports the same interval
# Groups with figures of their own: the largest, by items (then name). Each costs a
# bootstrap; 5,000 groups of two items cost 11 s on every request before.
MAX_GROUPS = 50


class Refusal(Exception):
    """Nothing to evaluate, and why: stored and answered as a 409 with this code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _label_key(label: str) -> str:
    """Labels match after stripping and case-folding ("Sick" == "sick"), nothing else."""
    return label.strip().casefold()


Arrays = tuple[np.ndarray, np.ndarray]


@dataclass
class Cohort:
    """A finished batch's labelled, scored items and what was left out, and why."""

    model_id: str
    model_version: str
    manifest: dict[str, Any]
    labels: list[int] = field(default_factory=list)  # 1 = the model's positive label
    scores: list[float] = field(default_factory=list)
    groups: list[str | None] = field(default_factory=list)
    rejected_by_gate: int = 0
    failed: int = 0
    unlabelled: int = 0
    label_errors: list[tuple[str | None, str]] = field(default_factory=list)

    @property
    def model_labels(self) -> list[str]:
        labels = self.manifest.get("labels")
        return [str(x) for x in labels] if isinstance(labels, list) else list(DEFAULT_LABELS)

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    def arrays(self) -> Arrays:
        return np.asarray(self.labels, dtype=np.int64), np.asarray(self.scores, dtype=np.float64)

    def group_arrays(self, limit: int = MAX_GROUPS) -> tuple[dict[str, Arrays], int]:
        """The items of the ``limit`` largest groups (by name), in one pass over the
        items, and how many groups were left out. Groups are never empty strings (a
        blank group is stored as none)."""
        members: dict[str, list[int]] = {}
        for i, name in enumerate(self.groups):
            if name:
                members.setdefault(name, []).append(i)
        largest = sorted(members, key=lambda name: (-len(members[name]), name))[:limit]
        y, s = self.arrays()
        kept = {name: (y[members[name]], s[members[name]]) for name in sorted(largest)}
        return kept, len(members) - len(kept)

    def curves(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, labels, scores): everything, then each group with figures."""
        groups, _ = self.group_arrays()
        return [("overall", *self.arrays()), *((n, *a) for n, a in groups.items())]


def collect(session: Session, batch_id: str) -> Cohort:
    """The batch's cohort, or a :class:`Refusal` that says why there is none."""
    batch = session.get(Batch, batch_id)
    if batch is None or batch.status != BatchStatus.COMPLETED:
        raise Refusal("batch_not_finished", "The batch has not finished.")
    rows = batches.evaluation_items(session, batch_id)
    labelled = [r for r in rows if r.label is not None]
    if not labelled:
        raise Refusal(
            "no_labels",
            "No item of this batch has a label; send a labels.csv (path,label[,group]) "
            "with the recordings to evaluate them.",
        )
    models = sorted(
        {
            (r.model_id, r.model_version)
            for r in labelled
            if r.status == JobStatus.SUCCEEDED and r.model_id and r.model_version
        }
    )
    if not models:
        raise Refusal(
            "no_scored_items",
            f"None of the {len(labelled)} labelled items has a score (the cough gate "
            "refused them or they failed), so there is nothing to evaluate.",
        )
    if len(models) > 1:
        named = ", ".join(f"{m} {v}" for m, v in models)
        raise Refusal(
            "several_models",
            f"The labelled items were scored by {len(models)} models ({named}); one "
            "evaluation mixes no models. Submit the cohort again as one batch.",
        )
    model_id, model_version = models[0]
    manifest = jobs.scoring_manifests(session, models).get(models[0])
    if manifest is None or "threshold" not in manifest:
        raise Refusal(
            "model_unknown",
            f"The model {model_id} {model_version} that scored this batch is not in the "
            "served-model registry, so its labels and threshold are unknown.",
        )
    cohort = Cohort(model_id, model_version, manifest)
    negative, positive = (_label_key(x) for x in cohort.model_labels)
    cohort.unlabelled = len(rows) - len(labelled)
    for r in labelled:
        key = _label_key(r.label)
        if key not in (negative, positive):
            # Reported, never guessed: "covid", "1" or "yes" may mean anything.
            cohort.label_errors.append((r.path, r.label))
        elif r.status == JobStatus.SUCCEEDED and r.score is not None:
            cohort.labels.append(1 if key == positive else 0)
            cohort.scores.append(float(r.score))
            cohort.groups.append(r.group)
        elif r.error_code == GATE_REFUSAL:
            cohort.rejected_by_gate += 1
        else:
            cohort.failed += 1
    return cohort


def report(cohort: Cohort) -> dict[str, Any]:
    """The evaluation's figures: shared.metrics over the cohort, overall and per group
    (the API adds the links to its pictures when it answers)."""
    from shared import metrics

    y, s = cohort.arrays()
    groups, omitted = cohort.group_arrays()
    with_group = [g for g in cohort.groups if g is not None]
    group_labels = [lab for lab, g in zip(cohort.labels, cohort.groups, strict=True) if g]
    note = ModelNote.of(cohort.manifest)
    return {
        "overall": metrics.summarise(y, s, cohort.threshold, BOOTSTRAP_SEED),
        "groups": {
            name: metrics.summarise(gy, gs, cohort.threshold, BOOTSTRAP_SEED)
            for name, (gy, gs) in groups.items()
        },
        "groups_omitted": omitted,
        # Every group counts here: one pass, no bootstrap.
        "group_only_auc": metrics.group_only_auc(group_labels, with_group) if with_group else None,
        "rejected_by_gate": cohort.rejected_by_gate,
        "label_errors": {
            "count": len(cohort.label_errors),
            "examples": [
                {"path": path, "label": label} for path, label in cohort.label_errors[:EXAMPLES]
            ],
        },
        "failed": cohort.failed,
        "unlabelled": cohort.unlabelled,
        "model": {
            "id": cohort.model_id,
            "version": cohort.model_version,
            "labels": cohort.model_labels,
            "caveat": note.caveat,
            "within_source_auc": note.within_source_auc,
        },
        "threshold": cohort.threshold,
    }


def pictures(cohort: Cohort) -> tuple[bytes | None, bytes]:
    """The ROC curves (None when the items carry one label only: there is no curve)
    and the reliability diagram, as PNG."""
    from shared import plots

    y, _ = cohort.arrays()
    curves = cohort.curves()
    roc = None if y.size == 0 or y.min() == y.max() else plots.roc_png(curves)
    return roc, plots.calibration_png(curves, cohort.threshold)


def evaluate_batch(rt: Runtime, batch_id: str, variant: str = evaluations.DEFAULT) -> str | None:
    """Compute and store the evaluation the API asked for; the state stored (None when
    nothing was pending, or the claim was gone when it was done)."""
    if variant != evaluations.DEFAULT:
        log.warning("batch %s: unknown evaluation variant %r", batch_id, variant)
        return None
    with rt.session() as session:
        asked_at: datetime | None = evaluations.claimed_at(session, batch_id, variant)
    if asked_at is None:
        return None
    roc: bytes | None = None
    calibration: bytes | None = None
    try:
        with rt.session() as session:
            cohort = collect(session, batch_id)
        body, refused = report(cohort), False
        roc, calibration = pictures(cohort)
    except Refusal as refusal:
        body, refused = {"code": refusal.code, "message": refusal.message}, True
    except Exception:
        # Not stored: the next request asks again (and this one is logged by Celery).
        with rt.session() as session:
            evaluations.release(session, batch_id, variant, asked_at)
        raise
    with rt.session() as session:
        stored = evaluations.store(
            session,
            batch_id,
            variant,
            asked_at,
            body=body,
            refused=refused,
            roc_png=roc,
            calibration_png=calibration,
        )
    state = evaluations.REFUSED if refused else evaluations.READY
    log.info("batch %s: evaluation %s%s", batch_id, state, "" if stored else " (dropped)")
    return state if stored else None
