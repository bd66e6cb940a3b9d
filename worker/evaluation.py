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
from shared.config import Settings
from shared.model_registry import ModelNote
from shared.tables import Batch, BatchStatus, JobStatus
from worker import bundles
from worker.runtime import Runtime

log = logging.getLogger("tussis.worker")

GATE_REFUSAL = "no_cough_detected"
EXAMPLES = 5  # label errors shown by path
DEFAULT_LABELS = ("not sick", "sick")  # what a bundle without "labels" means (ml/bundle.py)
BOOTSTRAP_SEED = 0  # fixed: the same batch always reports the same interval
# Groups with figures of their own: the largest, by items (then name). Each costs a
# bootstrap; 5,000 groups of two items cost 11 s on every request before.
MAX_GROUPS = 50
# The trivial baselines beside every AUC: what how a clip was cut or recorded says of
# its label, by name, with the job column (and Cohort list) that holds each feature.
# Active share and loudness are ml.acoustic's, computed by worker.pipeline.
BASELINES = {"duration": "duration_s", "active_share": "active_share", "loudness": "loudness_db"}


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
    # Per scored item, beside labels and scores: its content's sha256 and why the
    # model saw it while it was built (worker.bundles: "train", "conflicting_labels")
    # or None.
    sha256s: list[str | None] = field(default_factory=list)
    seen: list[str | None] = field(default_factory=list)
    split_known: bool = False  # whether the bundle's training split could be read
    # Per scored item, its trivial features (None where a job predates them): the
    # baselines' scores (BASELINES).
    duration_s: list[float | None] = field(default_factory=list)
    active_share: list[float | None] = field(default_factory=list)
    loudness_db: list[float | None] = field(default_factory=list)

    @property
    def model_labels(self) -> list[str]:
        labels = self.manifest.get("labels")
        return [str(x) for x in labels] if isinstance(labels, list) else list(DEFAULT_LABELS)

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])

    def subset(self, keep: list[int]) -> Cohort:
        """The same cohort with only the scored items at ``keep`` (counts carried over)."""
        out = Cohort(self.model_id, self.model_version, self.manifest)
        out.rejected_by_gate, out.failed, out.unlabelled = (
            self.rejected_by_gate,
            self.failed,
            self.unlabelled,
        )
        out.label_errors, out.split_known = self.label_errors, self.split_known
        for name in ("labels", "scores", "groups", "sha256s", "seen", *BASELINES.values()):
            values = self.column(name)
            setattr(out, name, [values[i] for i in keep])
        return out

    def column(self, name: str) -> list[Any]:
        """A per-item list, None for every item where it was never filled (a cohort
        built by hand, as scripts/bench.py does, has labels, scores and groups only)."""
        values = getattr(self, name)
        return values if len(values) == len(self.labels) else [None] * len(self.labels)

    def held_out(self) -> Cohort:
        """The items the model never saw while it was built: the headline's."""
        return self.subset([i for i, why in enumerate(self.column("seen")) if why is None])

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


def collect(session: Session, batch_id: str, settings: Settings) -> Cohort:
    """The batch's cohort, or a :class:`Refusal` that says why there is none. Each
    scored item is marked with why the model saw it in training, from the bundle's
    split (worker.bundles), matched on the upload's sha256."""
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
    split = bundles.training_split(settings, model_id, model_version)
    cohort.split_known = split is not None
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
            cohort.sha256s.append(r.audio_sha256)
            cohort.seen.append(split.reason(r.audio_sha256) if split is not None else None)
            for column in BASELINES.values():
                getattr(cohort, column).append(getattr(r, column))
        elif r.error_code == GATE_REFUSAL:
            cohort.rejected_by_gate += 1
        else:
            cohort.failed += 1
    return cohort


def _figures(cohort: Cohort) -> dict[str, Any]:
    """shared.metrics over the cohort's scored items, overall and per group."""
    from shared import metrics

    y, s = cohort.arrays()
    groups, omitted = cohort.group_arrays()
    with_group = [g for g in cohort.groups if g is not None]
    group_labels = [lab for lab, g in zip(cohort.labels, cohort.groups, strict=True) if g]
    return {
        "overall": metrics.summarise(y, s, cohort.threshold, BOOTSTRAP_SEED),
        "groups": {
            name: metrics.summarise(gy, gs, cohort.threshold, BOOTSTRAP_SEED)
            for name, (gy, gs) in groups.items()
        },
        "groups_omitted": omitted,
        # Every group counts here: one pass, no bootstrap.
        "group_only_auc": metrics.group_only_auc(group_labels, with_group) if with_group else None,
    }


def baseline_auc(labels: np.ndarray, feature: list[float | None]) -> dict[str, Any]:
    """The AUC of one feature alone, in whichever direction does better on these
    items (an upper bound for that feature: it never flatters the model), over the
    items that have the feature."""
    from shared import metrics

    known = np.array([v is not None for v in feature], dtype=bool)
    values = np.array([v if v is not None else np.nan for v in feature], dtype=np.float64)
    auc = metrics.roc_auc(labels[known], values[known]) if known.any() else None
    if auc is None:
        return {"auc": None, "direction": None, "n": int(known.sum())}
    higher = auc >= 0.5
    return {
        "auc": auc if higher else 1.0 - auc,
        "direction": "higher" if higher else "lower",  # which values mean the positive label
        "n": int(known.sum()),
    }


def baselines_of(labels: np.ndarray, scores: np.ndarray, cohort: Cohort, keep: Any) -> dict:
    """The model's AUC beside each baseline's on the items at ``keep``, and which
    baselines it does not beat."""
    from shared import metrics

    model_auc = metrics.roc_auc(labels, scores)
    out: dict[str, Any] = {"model_auc": model_auc}
    for name, column in BASELINES.items():
        values = cohort.column(column)
        out[name] = baseline_auc(labels, [values[i] for i in keep])
    out["not_beaten_by"] = [
        name
        for name in BASELINES
        if model_auc is not None and out[name]["auc"] is not None and model_auc <= out[name]["auc"]
    ]
    return out


def baselines(cohort: Cohort) -> dict[str, Any]:
    """Per group (those with figures) and overall: duration, active share and loudness
    alone against the model, flagged where the model does not beat one."""
    y, s = cohort.arrays()
    members: dict[str, list[int]] = {}
    for i, name in enumerate(cohort.groups):
        if name:
            members.setdefault(name, []).append(i)
    groups, _ = cohort.group_arrays()
    return {
        "overall": baselines_of(y, s, cohort, range(len(y))),
        "groups": {
            name: baselines_of(y[members[name]], s[members[name]], cohort, members[name])
            for name in groups
        },
        "method": "each feature alone as the score, in whichever direction does better on "
        "these items (an upper bound for it); active share: 32 ms frames within 30 dB of "
        "the clip's loudest; loudness: RMS level (dBFS)",
    }


def training_items(cohort: Cohort) -> dict[str, Any]:
    """How many scored items the model saw while it was built, by reason, and a
    sentence that says so."""
    trained = sum(1 for why in cohort.column("seen") if why == bundles.TRAIN)
    conflicting = sum(1 for why in cohort.column("seen") if why == bundles.CONFLICTING)
    left_out = trained + conflicting
    if not cohort.split_known:
        message = (
            f"The training split of {cohort.model_id} {cohort.model_version} is not known "
            "here (its bundle is not served by this deployment or records none), so items "
            "it was trained on cannot be left out: the figures may be optimistic."
        )
    elif left_out:
        message = (
            f"{left_out} of the {len(cohort.labels)} scored items are left out of these "
            f"figures: {trained} were in the model's training data (it was fitted and its "
            f"threshold chosen on them) and {conflicting} are contents its training data "
            "holds under both labels. Figures with them flatter the model."
        )
    else:
        message = "None of the scored items was in the model's training data."
    return {
        "split_known": cohort.split_known,
        "left_out": left_out,
        "train": trained,
        "conflicting_labels": conflicting,
        "message": message,
    }


def report(cohort: Cohort) -> dict[str, Any]:
    """The evaluation's figures: shared.metrics over the items the model never saw in
    training (the headline), overall and per group; the figures with every item after
    them, marked as flattering, when some were left out (the API adds the links to its
    pictures when it answers)."""
    held = cohort.held_out()
    if cohort.labels and not held.labels:
        raise Refusal(
            "only_training_items",
            f"All {len(cohort.labels)} scored items were in the training data of "
            f"{cohort.model_id} {cohort.model_version} (its split), so an evaluation on them "
            "would only say how well it remembers them. Evaluate recordings it never saw.",
        )
    seen = training_items(cohort)
    note = ModelNote.of(cohort.manifest)
    body: dict[str, Any] = {
        **_figures(held),
        "baselines": baselines(held),
        "training_items": seen,
        "all_items": (
            {
                **_figures(cohort),
                "flattering": True,
                "message": f"With the {seen['left_out']} items the model saw in training: "
                "these figures flatter it.",
            }
            if seen["left_out"]
            else None
        ),
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
    return body


def pictures(cohort: Cohort) -> tuple[bytes | None, bytes]:
    """The ROC curves (None when the items carry one label only: there is no curve)
    and the reliability diagram, as PNG."""
    from shared import plots

    y, _ = cohort.arrays()
    curves = cohort.curves()  # the caller passes the headline's items (held_out)
    roc = None if y.size == 0 or y.min() == y.max() else plots.roc_png(curves)
    return roc, plots.calibration_png(curves, cohort.threshold)


def evaluate_batch(rt: Runtime, batch_id: str, variant: str = evaluations.DEFAULT) -> str | None:
    """Compute and store the evaluation the API asked for (``default``, or the
    comparison with another batch, ``compare:<id>``); the state stored (None when
    nothing was pending, or the claim was gone when it was done)."""
    other = evaluations.compared_with(variant)
    if variant != evaluations.DEFAULT and other is None:
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
            if other is not None:
                body, roc = compare_batches(session, batch_id, other, rt.settings)
            else:
                cohort = collect(session, batch_id, rt.settings)
                body = report(cohort)
                roc, calibration = pictures(cohort.held_out())
        refused = False
    except Refusal as refusal:
        body, refused = {"code": refusal.code, "message": refusal.message}, True
        if isinstance(refusal, CompareRefusal):
            body["status"] = refusal.status
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
    log.info(
        "batch %s: evaluation %s %s%s", batch_id, variant, state, "" if stored else " (dropped)"
    )
    return state if stored else None


# --- two models on one cohort: the paired comparison (issue 25) ---------------------------


class CompareRefusal(Refusal):
    """The comparison cannot be made, answered as a 422 with this code."""

    status = 422


def _other(refusal: Refusal) -> CompareRefusal:
    """A refusal about the other batch, said of the other batch."""
    return CompareRefusal(
        f"compare_{refusal.code}", f"The batch to compare with: {refusal.message}"
    )


def pair(first: Cohort, second: Cohort) -> tuple[list[int], list[int], dict[str, int]]:
    """Items of both cohorts paired by content (sha256) and label, in the first's order:
    each content once (its first item in each batch). Items either model saw in
    training are left out, and counted."""
    where: dict[tuple[str, int], int] = {}
    for j, (digest, label) in enumerate(zip(second.column("sha256s"), second.labels, strict=True)):
        if digest is not None:
            where.setdefault((digest, label), j)
    seen_first, seen_second = first.column("seen"), second.column("seen")
    firsts: list[int] = []
    seconds: list[int] = []
    used: set[tuple[str, int]] = set()
    counts = {"paired": 0, "left_out": 0, "first_trained": 0, "second_trained": 0}
    for i, (digest, label) in enumerate(zip(first.column("sha256s"), first.labels, strict=True)):
        key = (digest, label)
        if digest is None or key in used or key not in where:
            continue
        used.add(key)
        j = where[key]
        counts["paired"] += 1
        if seen_first[i] is not None or seen_second[j] is not None:
            counts["left_out"] += 1
            counts["first_trained"] += seen_first[i] is not None
            counts["second_trained"] += seen_second[j] is not None
            continue
        firsts.append(i)
        seconds.append(j)
    return firsts, seconds, counts


def compared(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Both AUCs on the same items, the difference (second - first), DeLong's interval
    and p value, and the paired bootstrap's interval."""
    from shared import metrics

    delong = metrics.delong_auc_difference(y, a, b)
    interval = metrics.paired_bootstrap_auc_difference(y, a, b, BOOTSTRAP_SEED)
    return {
        "n": len(y),
        "positives": int(y.sum()),
        "auc_first": metrics.roc_auc(y, a),
        "auc_second": metrics.roc_auc(y, b),
        "difference": delong["difference"] if delong else None,
        "delong": (
            {k: delong[k] for k in ("se", "ci", "z", "p_value")} if delong is not None else None
        ),
        "bootstrap_ci": list(interval) if interval else None,
    }


def comparison(first: Cohort, second: Cohort) -> tuple[dict[str, Any], bytes | None]:
    """The paired comparison of two batches' models on their common items, overall and
    per group of the first batch, with the trivial baselines; and an ROC figure with
    both curves."""
    from shared import plots

    if [x.casefold() for x in first.model_labels] != [x.casefold() for x in second.model_labels]:
        raise CompareRefusal(
            "labels_differ",
            f"The two models name their labels differently ({first.model_labels} and "
            f"{second.model_labels}), so their items cannot be paired by label.",
        )
    firsts, seconds, counts = pair(first, second)
    if not firsts:
        raise CompareRefusal(
            "no_common_items",
            "The two batches share no scored recording with the same label (same content, "
            "by sha256)"
            + (
                f" that neither model saw in training ({counts['left_out']} did)"
                if counts["left_out"]
                else ""
            )
            + ", so there is nothing to compare.",
        )
    a = first.subset(firsts)
    b_scores = np.asarray([second.scores[j] for j in seconds], dtype=np.float64)
    y, s_a = a.arrays()
    members: dict[str, list[int]] = {}
    for k, name in enumerate(a.groups):
        if name:
            members.setdefault(name, []).append(k)
    largest = sorted(members, key=lambda n: (-len(members[n]), n))[:MAX_GROUPS]
    baseline = baselines(a)
    body: dict[str, Any] = {
        "first": _model(first),
        "second": _model(second),
        "items": {
            **counts,
            "compared": len(firsts),
            "message": (
                f"{counts['paired']} recordings are in both batches with the same label; "
                f"{counts['left_out']} of them are left out because a model was trained on "
                f"them (first: {counts['first_trained']}, second: {counts['second_trained']})."
                if counts["left_out"]
                else f"{counts['paired']} recordings are in both batches with the same label."
            ),
        },
        "overall": {**compared(y, s_a, b_scores), "baselines": baseline["overall"]},
        "groups": {
            name: {
                **compared(y[members[name]], s_a[members[name]], b_scores[members[name]]),
                "baselines": baseline["groups"].get(name),
            }
            for name in sorted(largest)
        },
        "groups_omitted": len(members) - len(largest),
        "difference_is": "second model's AUC minus the first's",
    }
    roc = None
    if y.size and y.min() != y.max():
        roc = plots.roc_png(
            [
                (f"{first.model_id} {first.model_version} (first)", y, s_a),
                (f"{second.model_id} {second.model_version} (second)", y, b_scores),
            ],
            f"Both models on the same {len(y)} recordings",
        )
    return body, roc


def _model(cohort: Cohort) -> dict[str, Any]:
    return {
        "id": cohort.model_id,
        "version": cohort.model_version,
        "training_split_known": cohort.split_known,
    }


def compare_batches(session: Session, batch_id: str, other_id: str, settings: Settings) -> Any:
    first = collect(session, batch_id, settings)
    try:
        second = collect(session, other_id, settings)
    except CompareRefusal:
        raise
    except Refusal as refusal:
        raise _other(refusal) from None
    return comparison(first, second)
