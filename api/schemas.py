"""The JSON bodies the API answers with, as pydantic models.

They are the public contract (docs/api.md): api/representation.py builds every
job, batch and model body through them, and the OpenAPI document
(``/api/v1/openapi.json``) is generated from them. Field order is the documented
order. Fields that are always present have no default (so the document marks
them required, ``null`` where allowed); a field that only some bodies carry has
a default and is left out when unset.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.tables import BatchStatus, JobStatus

Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})]
# Where a listing's next page starts: opaque, URL-safe base64 (shared/cursors.py).
NextCursor = Annotated[
    str | None,
    Field(
        description="Pass back as `cursor` for the next page; null on the last page.",
        json_schema_extra={"pattern": "^[A-Za-z0-9_-]+$"},
    ),
]


class Body(BaseModel):
    # Serialisation follows the declared fields; a body with any other key is a bug.
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True)


# --- errors ----------------------------------------------------------------------------


class ErrorDetail(Body):
    code: str = Field(description="Stable, machine-readable code (docs/api.md, Errors).")
    message: str = Field(description="A sentence for people.")
    status: int = Field(description="The HTTP status, repeated.")
    served: list[str] | None = Field(
        default=None,
        description="`model_not_served` only: the models a live worker serves, as "
        "`name@version`, newest version of each name first.",
    )


class Error(Body):
    """Every rejection: ``{"error": {"code", "message", "status"}}``."""

    error: ErrorDetail


class NotReady(Error):
    """``/readyz`` when the database or the broker cannot be reached."""

    checks: dict[str, str]


# --- jobs ------------------------------------------------------------------------------


class JobAudio(Body):
    filename: str | None
    content_type: str | None
    size_bytes: int
    sha256: str
    duration_s: float | None


Segments = list[list[float]]


class JobResult(Body):
    diagnosis: str | None
    diagnostico: str | None = Field(
        alias="Diagnóstico", description="Repeats `diagnosis` for the proof of concept's clients."
    )
    score: float | None
    threshold: float | None
    model_id: str | None
    model_version: str | None
    cough_detected: bool | None
    cough_score: float | None
    cough_segments: Segments | None
    caveat: str | None = Field(
        description="The model card's one-sentence warning about what this score is worth "
        "(from the bundle's manifest); null when the bundle has none."
    )
    within_source_auc: float | None = Field(
        description="The bundle's headline AUC within a recording source (from its "
        "manifest): how well the score ranks recordings of one channel; null when unknown."
    )


class JobError(Body):
    code: str | None
    message: str | None
    # Only on failures after the cough gate ran (no_cough_detected and later ones).
    cough_detected: bool | None = None
    cough_score: float | None = None
    cough_segments: Segments | None = None


class ModelPin(Body):
    id: str = Field(description="The model's name (`GET /api/v1/models`).")
    version: str


class JobLinks(Body):
    self: str
    spectrogram: str


class Job(Body):
    id: str
    status: JobStatus
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    audio_deleted_at: Timestamp | None
    attempts: int
    audio: JobAudio
    result: JobResult | None
    error: JobError | None
    batch_id: str | None
    path: str | None
    label: str | None
    group: str | None = Field(
        description="Batch items: the group (site, device, source) a labels file gave."
    )
    model: ModelPin | None = Field(
        description="The model this job is scored with, chosen at intake (`model`, or the "
        "deployment's default); null only for a job accepted before any worker registered a "
        "model, until a worker scores it with its default."
    )
    links: JobLinks


class PictureDrawing(Body):
    """``202`` from a spectrogram that a worker is drawing now: ask again after
    ``Retry-After`` seconds."""

    status: Literal["drawing"]
    message: str


class JobPage(Body):
    jobs: list[Job]
    next_cursor: NextCursor


# --- batches ---------------------------------------------------------------------------


class BatchCounts(Body):
    queued: int
    running: int
    succeeded: int
    failed: int


class BatchCallback(Body):
    url: str
    state: str = Field(
        description="`waiting` until the batch completes, then `pending`, `delivered` or `failed`."
    )
    attempts: int


class BatchLinks(Body):
    self: str
    items: str
    results: str


class Batch(Body):
    id: str
    status: BatchStatus
    created_at: Timestamp
    closed_at: Timestamp | None
    finished_at: Timestamp | None
    total: int
    counts: BatchCounts
    progress: float = Field(ge=0, le=1)
    elapsed_s: float
    eta_s: float | None
    callback: BatchCallback | None
    model: ModelPin | None = Field(
        description="The model every item is scored with, chosen at intake (`model`)."
    )
    rescored_from: str | None = Field(
        description="A rescored batch: the batch whose stored audio it scored again."
    )
    links: BatchLinks


class ItemError(Body):
    code: str | None
    message: str | None


class RejectedItem(Body):
    path: str
    error: ItemError


class BatchUpload(Batch):
    """A batch with the report of the files this request sent."""

    accepted: int
    duplicates: int
    rejected: list[RejectedItem]


class BatchPage(Body):
    batches: list[Batch]
    next_cursor: NextCursor


class ItemPage(Body):
    items: list[Job]
    next_cursor: NextCursor


# --- evaluation of a labelled batch -----------------------------------------------------

Rate = Annotated[float | None, Field(ge=0, le=1)]


class Confusion(Body):
    tp: int
    fn: int
    tn: int
    fp: int


class EvaluationFigures(Body):
    """The figures of one set of scored items (docs/batches.md, Evaluate a labelled batch)."""

    n: int
    positives: int
    negatives: int
    auc: Rate = Field(description="ROC AUC; null when one label is absent.")
    auc_ci: list[float] | None = Field(
        description="Bootstrap 95 % interval of the AUC, [low, high] (2,000 resamples).",
        min_length=2,
        max_length=2,
    )
    accuracy: Rate
    sensitivity: Rate
    specificity: Rate
    confusion: Confusion
    brier: Rate = Field(description="Mean squared difference of score and label.")
    ece: Rate = Field(description="Expected calibration error over ten equal-width bins.")


class LabelError(Body):
    path: str | None
    label: str


class LabelErrors(Body):
    count: int
    examples: list[LabelError] = Field(description="The first few such items.")


class EvaluationModel(Body):
    id: str
    version: str
    labels: list[str] = Field(description="[negative, positive], as the bundle names them.")
    caveat: str | None
    within_source_auc: float | None


class EvaluationLinks(Body):
    roc: str
    calibration: str


class BaselineAuc(Body):
    auc: Rate = Field(
        description="The AUC of this feature alone as the score, in whichever direction "
        "does better here (an upper bound for it); null when one label is absent."
    )
    direction: Literal["higher", "lower"] | None = Field(
        description="Whether higher or lower values go with the positive label."
    )
    n: int = Field(description="Items that have this feature (jobs from before it have none).")


class Baselines(Body):
    """The model's AUC beside trivial baselines on the same items."""

    model_auc: Rate
    duration: BaselineAuc
    active_share: BaselineAuc = Field(
        description="The share of the clip's 32 ms frames within 30 dB of its loudest."
    )
    loudness: BaselineAuc = Field(description="The clip's RMS level (dBFS).")
    not_beaten_by: list[Literal["duration", "active_share", "loudness"]] = Field(
        description="The baselines whose AUC the model's does not exceed: where it says no "
        "more than how the clip was cut or recorded."
    )


class CohortBaselines(Body):
    overall: Baselines
    groups: dict[str, Baselines] = Field(description="Per group with figures.")
    method: str


class TrainingItems(Body):
    """The scored items the model saw while it was built (its bundle's ``split.json``,
    matched on each upload's sha256): left out of the headline figures."""

    split_known: bool = Field(
        description="False when the model's training split is not known here (its bundle "
        "is not served by this deployment, or records none): nothing could be left out."
    )
    left_out: int = Field(description="Scored items left out of the headline figures.")
    train: int = Field(description="... of which the model was fitted and tuned on.")
    conflicting_labels: int = Field(
        description="... of which its training data holds under both labels."
    )
    message: str = Field(description="The same, as a sentence.")


class FlatteringFigures(Body):
    """The figures with every scored item, the model's training items included."""

    overall: EvaluationFigures
    groups: dict[str, EvaluationFigures]
    groups_omitted: int = 0
    group_only_auc: Rate
    flattering: Literal[True]
    message: str


class AucDifference(Body):
    """DeLong's test for two correlated ROC AUCs on the same items."""

    se: float = Field(description="Standard error of the difference.")
    ci: list[float] = Field(
        description="Normal 95 % interval of the difference.", min_length=2, max_length=2
    )
    z: float
    p_value: float = Field(ge=0, le=1, description="Two-sided p value (no difference).")


class ComparedFigures(Body):
    """Both models on the same items."""

    n: int
    positives: int
    auc_first: Rate = Field(description="The first batch's model (the batch in the URL).")
    auc_second: Rate = Field(description="The `compare` batch's model.")
    difference: float | None = Field(
        description="`auc_second - auc_first`; null when one label is absent."
    )
    delong: AucDifference | None
    bootstrap_ci: list[float] | None = Field(
        description="Paired bootstrap 95 % interval of the difference (2,000 resamples of "
        "the items, the same items for both models).",
        min_length=2,
        max_length=2,
    )
    baselines: Baselines | None = Field(
        description="Duration, active share and loudness alone on these items; "
        "`model_auc` and `not_beaten_by` are the first model's."
    )


class ComparedModel(Body):
    id: str
    version: str
    training_split_known: bool = Field(
        description="False when its training items could not be left out (its bundle is "
        "not served here)."
    )


class ComparedItems(Body):
    paired: int = Field(description="Recordings in both batches with the same label.")
    left_out: int = Field(description="... left out: a model was trained or tuned on them.")
    first_trained: int
    second_trained: int
    compared: int = Field(description="... compared: `paired - left_out`.")
    message: str


class ComparisonLinks(Body):
    roc: str = Field(description="Both models' ROC curves on the compared items (PNG).")


class Comparison(Body):
    """Two batches' models compared on the recordings they share, paired by content
    (sha256) and label."""

    first: ComparedModel
    second: ComparedModel
    items: ComparedItems
    overall: ComparedFigures
    groups: dict[str, ComparedFigures] = Field(
        description="Per group of the first batch (the 50 largest)."
    )
    groups_omitted: int
    difference_is: str
    links: ComparisonLinks


class Evaluating(Body):
    """``202`` from a batch's evaluation that a worker is computing now (once: it is
    stored): ask again after ``Retry-After`` seconds."""

    status: Literal["evaluating"]
    message: str


class Evaluation(Body):
    """A finished batch's labelled items against their scores."""

    overall: EvaluationFigures
    groups: dict[str, EvaluationFigures] = Field(
        description="The same figures per `group`, for items that have one: the 50 largest "
        "groups (by items)."
    )
    groups_omitted: int = Field(
        0,
        description="Groups beyond the 50 largest, without figures of their own (their items "
        "count in `overall` and in `group_only_auc`).",
    )
    group_only_auc: Rate = Field(
        description="The AUC of the group alone (each item scored by its group's share of "
        "positives in this batch, which flatters it); null without groups."
    )
    baselines: CohortBaselines = Field(
        description="Duration, active share and loudness alone, beside the model's AUC, on "
        "the headline's items, overall and per group."
    )
    training_items: TrainingItems = Field(
        description="Items the model was trained or tuned on: left out of `overall` and "
        "`groups`, the headline."
    )
    all_items: FlatteringFigures | None = Field(
        description="The figures with the training items too (they flatter the model); "
        "null when none was left out."
    )
    rejected_by_gate: int = Field(
        description="Labelled items the cough gate refused (`no_cough_detected`): not scored."
    )
    label_errors: LabelErrors = Field(
        description="Items whose label is neither of the model's two labels: not scored."
    )
    failed: int = Field(description="Labelled items that failed for another reason.")
    unlabelled: int = Field(description="Items without a label: left out.")
    model: EvaluationModel
    threshold: float = Field(
        description="The bundle's threshold: sensitivity and "
        "specificity count a score at or above it as the positive label."
    )
    links: EvaluationLinks


# --- models and health -----------------------------------------------------------------


class ServedModel(Body):
    id: str
    version: str
    role: str
    fingerprint: str
    backbone: str | None
    labels: list[str] | None
    threshold: float | None
    first_seen_at: Timestamp | None
    last_seen_at: Timestamp | None
    card: dict[str, Any]
    active: bool = Field(
        description="Some live worker served it within `TUSSIS_MODEL_GRACE`: jobs may name it."
    )
    default: bool = Field(
        description="The model a job or batch without `model` is scored with (one at most)."
    )


class ServedModels(Body):
    notice: str
    models: list[ServedModel]


class Alive(Body):
    status: Literal["ok"]


class Ready(Body):
    status: Literal["ready"]
    checks: dict[str, str]


def dump(model: type[Body], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` checked against ``model``, as JSON-ready values in the declared order
    (keys ``data`` does not carry, such as a job error's cough fields, stay out)."""
    return model.model_validate(data).model_dump(mode="json", by_alias=True, exclude_unset=True)
