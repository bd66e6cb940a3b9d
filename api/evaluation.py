"""``/api/v1/batches/{id}/evaluation``: a finished batch's labelled items against
their scores, and its ROC and reliability diagrams as PNG. See docs/batches.md.

Answered from what a worker computed once and stored (shared/evaluations.py,
worker/evaluation.py): the API never computes an evaluation. The first request for a
finished batch asks a worker and answers ``202`` with ``Retry-After``; once stored,
every request reads the row: the figures, the pictures, or the reason there are
none (``409``)."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api import contract, intake, schemas
from api.auth import current_owner
from api.contract import BatchPath
from api.errors import ApiError
from api.representation import batch_url
from shared import batches, evaluations, model_registry
from shared.db import session_scope
from shared.queue import publish_evaluation
from shared.tables import Batch, BatchStatus

bp = APIBlueprint("evaluation", __name__, abp_tags=[contract.TAGS["batches"]])

EVALUATING_RETRY_S = 1


def _conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


class CompareQuery(BaseModel):
    compare: str | None = Field(
        None,
        max_length=64,
        description="Another finished, labelled batch of yours: compare the two batches' "
        "models on the recordings they share (paired by content and label).",
    )


def _unprocessable(code: str, message: str) -> ApiError:
    return ApiError(422, code, message)


def _check_other(session: Any, batch_id: str, other_id: str, owner: str) -> None:
    """The batch to compare with: yours, finished, not this one (422 otherwise)."""
    if other_id == batch_id:
        raise _unprocessable(
            "compare_same_batch", "Compare a batch with another batch, not with itself."
        )
    other = batches.get_for_owner(session, other_id, owner)
    if other is None:
        raise _unprocessable(
            "compare_batch_not_found", f"There is no batch {other_id} of yours to compare with."
        )
    if other.status != BatchStatus.COMPLETED:
        raise _unprocessable(
            "compare_batch_not_finished",
            f"The batch {other_id} to compare with has not finished; compare once every "
            "item of it has a result.",
        )


def _evaluating_model(session: Session, batch: Batch) -> tuple[str, str] | None:
    """Whose queue evaluates ``batch``: its model's while a live worker serves it (that
    worker holds the bundle, hence what it was trained on, to leave those items out);
    else the shared batch queue, where any worker computes it and the evaluation says
    the training split was unknown, rather than a message nobody would take."""
    if not batch.model_id or not batch.model_version:
        return None
    s = intake.settings()
    active = model_registry.active_diagnosis(session, s.queue_name, s.model_grace_s)
    model = (batch.model_id, batch.model_version)
    return model if any((r.name, r.version) == model for r in active) else None


def _stored(batch_id: str, owner: str, compare: str | None = None) -> evaluations.Stored:
    """The batch's stored evaluation (or its comparison with the batch ``compare``), or
    a 404/409/422 that says why there is none; asks a worker (once) when none is
    stored yet."""
    variant = evaluations.DEFAULT if compare is None else evaluations.compare_variant(compare)
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
        if compare is not None:
            _check_other(session, batch_id, compare, owner)
        stored = evaluations.request(session, batch_id, variant)
        model = _evaluating_model(session, batch) if stored.publish else None
    if stored.publish:
        try:
            publish_evaluation(
                current_app.extensions["celery"],
                intake.settings(),
                batch_id,
                None if compare is None else variant,
                model=model,
            )
        except Exception as exc:
            # The claim is left pending: the first request after its lease asks again.
            current_app.logger.warning("batch %s: evaluation not queued (%s)", batch_id, exc)
    if stored.state == evaluations.REFUSED and stored.body is not None:
        status = int(stored.body.get("status", 409))
        raise ApiError(status, stored.body["code"], stored.body["message"])
    return stored


def _evaluating() -> Response:
    response = jsonify(
        status="evaluating",
        message="A worker is evaluating the batch (once: the result is kept); ask again "
        "in a moment.",
    )
    response.status_code = 202
    response.headers["Retry-After"] = str(EVALUATING_RETRY_S)
    return response


_ANSWERS = (404, 409)
_COMPARE_ANSWERS = (404, 409, 422)
_EVALUATING = contract.json_answer(
    schemas.Evaluating,
    "A worker is computing it now; ask again after `Retry-After` seconds.",
    {"Retry-After": contract.RETRY_AFTER},
)


@bp.get(
    "/batches/<batch_id>/evaluation",
    responses=contract.answers(
        {
            200: {
                "description": "The evaluation; with `compare`, the comparison of the two "
                "batches' models (`Comparison`).",
                "content": {
                    "application/json": {
                        "schema": {
                            "anyOf": [
                                contract.ref(schemas.Evaluation),
                                contract.ref(schemas.Comparison),
                            ]
                        }
                    }
                },
            },
            202: _EVALUATING,
        },
        *_COMPARE_ANSWERS,
    ),
)
def get_evaluation(path: BatchPath, query: CompareQuery) -> Response:
    """Evaluate a finished batch's labelled items, or compare two models on them

    409 `batch_not_finished` until the batch has completed; then 202 while a worker
    computes it (once), and the stored evaluation; 409 `no_labels`, `no_scored_items`,
    `several_models`, `model_unknown` or `only_training_items` when there is nothing
    one model scored to evaluate. The headline leaves out the items the model was
    trained or tuned on (`training_items`).

    With `compare=<other batch id>`: both models' AUCs on the recordings the two
    batches share (same content and label, neither model trained on it), overall and
    per group, with the difference's paired 95 % intervals (DeLong, paired bootstrap).
    422 `compare_same_batch`, `compare_batch_not_found`, `compare_batch_not_finished`,
    `compare_no_labels` (and the other refusals above, prefixed `compare_`),
    `labels_differ` or `no_common_items`."""
    stored = _stored(path.batch_id, current_owner(), query.compare)
    if stored.state != evaluations.READY or stored.body is None:
        return _evaluating()
    url = f"{batch_url(path.batch_id)}/evaluation"
    if query.compare is not None:
        links = {"roc": f"{url}/roc.png?compare={query.compare}"}
        return jsonify(schemas.dump(schemas.Comparison, {**stored.body, "links": links}))
    body: dict[str, Any] = {
        **stored.body,
        "links": {"roc": f"{url}/roc.png", "calibration": f"{url}/calibration.png"},
    }
    return jsonify(schemas.dump(schemas.Evaluation, body))


def _png(stored: evaluations.Stored, data: bytes | None) -> Response:
    if stored.state != evaluations.READY:
        return _evaluating()
    if data is None:
        raise _conflict(
            "auc_undefined",
            "The scored items carry only one of the model's two labels, so there is no "
            "ROC curve to draw.",
        )
    return Response(data, mimetype="image/png")


@bp.get(
    "/batches/<batch_id>/evaluation/roc.png",
    responses=contract.answers(
        {
            200: contract.file_answer("image/png", "ROC curves, overall and per group."),
            202: _EVALUATING,
        },
        *_COMPARE_ANSWERS,
    ),
)
def evaluation_roc(path: BatchPath, query: CompareQuery) -> Response:
    """The evaluation's ROC curves (PNG); with `compare`, both models' curves

    409 `auc_undefined` when the scored items carry only one of the two labels; with
    `compare`, the comparison's 422s."""
    stored = _stored(path.batch_id, current_owner(), query.compare)
    return _png(stored, stored.roc_png)


@bp.get(
    "/batches/<batch_id>/evaluation/calibration.png",
    responses=contract.answers(
        {
            200: contract.file_answer("image/png", "The reliability diagram."),
            202: _EVALUATING,
        },
        *_ANSWERS,
    ),
)
def evaluation_calibration(path: BatchPath) -> Response:
    """The evaluation's reliability diagram (PNG)"""
    stored = _stored(path.batch_id, current_owner())
    return _png(stored, stored.calibration_png)
