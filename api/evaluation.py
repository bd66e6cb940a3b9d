"""``/api/v1/batches/{id}/evaluation``: a finished batch's labelled items against
their scores (AUC with a bootstrap interval, sensitivity and specificity at the
bundle's threshold, Brier score, the same per group, the group-only baseline), and
its ROC and reliability diagrams as PNG. See docs/batches.md.

Computed on request from the job rows; the metrics are shared.metrics, the same
code as ``tussis evaluate``. shared.metrics (scikit-learn, scipy) and the plotting
(matplotlib) are imported when first asked for, so the API starts without them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flask import Response, jsonify
from flask_openapi3 import APIBlueprint

from api import contract, intake, schemas
from api.auth import current_owner
from api.contract import BatchPath
from api.errors import ApiError
from api.representation import ModelNote, batch_url
from shared import batches, jobs
from shared.db import session_scope
from shared.tables import BatchStatus, JobStatus

bp = APIBlueprint("evaluation", __name__, abp_tags=[contract.TAGS["batches"]])

GATE_REFUSAL = "no_cough_detected"
EXAMPLES = 5  # label errors shown by path
DEFAULT_LABELS = ("not sick", "sick")  # what a bundle without "labels" means (ml/bundle.py)
BOOTSTRAP_SEED = 0  # fixed: the same batch always reports the same interval


def _label_key(label: str) -> str:
    """Labels match after stripping and case-folding ("Sick" == "sick"), nothing else."""
    return label.strip().casefold()


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

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.labels, dtype=np.int64), np.asarray(self.scores, dtype=np.float64)

    def group_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        y, s = self.arrays()
        # Groups are never empty strings (a blank group is stored as none).
        g = np.asarray([name or "" for name in self.groups], dtype=object)
        return {name: (y[g == name], s[g == name]) for name in sorted(set(g) - {""})}

    def curves(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, labels, scores): everything, then each group."""
        return [("overall", *self.arrays()), *((n, *a) for n, a in self.group_arrays().items())]


def _conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def collect(batch_id: str, owner: str) -> Cohort:
    """The batch's cohort, or a 404/409 that says why there is none."""
    with session_scope(intake.settings().database_url) as session:
        batch = batches.get_for_owner(session, batch_id, owner)
        if batch is None:
            raise ApiError(404, "batch_not_found", f"There is no batch {batch_id}.")
        if batch.status != BatchStatus.COMPLETED:
            still_open = " (it is still open: close it)" if batch.status == BatchStatus.OPEN else ""
            raise _conflict(
                "batch_not_finished",
                f"The batch has not finished{still_open}; evaluate it once every item has a "
                "result.",
            )
        rows = batches.evaluation_items(session, batch_id)
        labelled = [r for r in rows if r.label is not None]
        if not labelled:
            raise _conflict(
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
            raise _conflict(
                "no_scored_items",
                f"None of the {len(labelled)} labelled items has a score (the cough gate "
                "refused them or they failed), so there is nothing to evaluate.",
            )
        if len(models) > 1:
            named = ", ".join(f"{m} {v}" for m, v in models)
            raise _conflict(
                "several_models",
                f"The labelled items were scored by {len(models)} models ({named}); one "
                "evaluation mixes no models. Submit the cohort again as one batch.",
            )
        model_id, model_version = models[0]
        manifest = jobs.scoring_manifests(session, models).get(models[0])
    if manifest is None or "threshold" not in manifest:
        raise _conflict(
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


def report(batch_id: str, cohort: Cohort) -> dict[str, Any]:
    """The evaluation body: shared.metrics over the cohort, overall and per group."""
    from shared import metrics

    y, s = cohort.arrays()
    groups = cohort.group_arrays()
    with_group = [g for g in cohort.groups if g is not None]
    group_labels = [lab for lab, g in zip(cohort.labels, cohort.groups, strict=True) if g]
    note = ModelNote.of(cohort.manifest)
    url = f"{batch_url(batch_id)}/evaluation"
    body = {
        "overall": metrics.summarise(y, s, cohort.threshold, BOOTSTRAP_SEED),
        "groups": {
            name: metrics.summarise(gy, gs, cohort.threshold, BOOTSTRAP_SEED)
            for name, (gy, gs) in groups.items()
        },
        "group_only_auc": metrics.group_only_auc(group_labels, with_group) if groups else None,
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
        "links": {"roc": f"{url}/roc.png", "calibration": f"{url}/calibration.png"},
    }
    return schemas.dump(schemas.Evaluation, body)


_ANSWERS = (404, 409)


@bp.get(
    "/batches/<batch_id>/evaluation",
    responses=contract.answers(
        {200: contract.json_answer(schemas.Evaluation, "The evaluation.")}, *_ANSWERS
    ),
)
def get_evaluation(path: BatchPath) -> Response:
    """Evaluate a finished batch's labelled items

    409 `batch_not_finished` until the batch has completed; 409 `no_labels`,
    `no_scored_items`, `several_models` or `model_unknown` when there is nothing
    one model scored to evaluate."""
    owner = current_owner()
    return jsonify(report(path.batch_id, collect(path.batch_id, owner)))


def _png(data: bytes) -> Response:
    return Response(data, mimetype="image/png")


@bp.get(
    "/batches/<batch_id>/evaluation/roc.png",
    responses=contract.answers(
        {200: contract.file_answer("image/png", "ROC curves, overall and per group.")},
        *_ANSWERS,
    ),
)
def evaluation_roc(path: BatchPath) -> Response:
    """The evaluation's ROC curves (PNG)

    409 `auc_undefined` when the scored items carry only one of the two labels."""
    from shared import plots

    cohort = collect(path.batch_id, current_owner())
    y, _ = cohort.arrays()
    if y.size == 0 or y.min() == y.max():
        raise _conflict(
            "auc_undefined",
            "The scored items carry only one of the model's two labels, so there is no "
            "ROC curve to draw.",
        )
    return _png(plots.roc_png(cohort.curves()))


@bp.get(
    "/batches/<batch_id>/evaluation/calibration.png",
    responses=contract.answers(
        {200: contract.file_answer("image/png", "The reliability diagram.")}, *_ANSWERS
    ),
)
def evaluation_calibration(path: BatchPath) -> Response:
    """The evaluation's reliability diagram (PNG)"""
    from shared import plots

    cohort = collect(path.batch_id, current_owner())
    return _png(plots.calibration_png(cohort.curves(), cohort.threshold))
