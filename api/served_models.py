"""``/api/v1/models``: the bundles the workers serve, with their model cards."""

from __future__ import annotations

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint

from api import contract, schemas
from api.representation import served_model_to_dict
from shared import model_registry
from shared.db import session_scope

bp = APIBlueprint("models", __name__, abp_tags=[contract.TAGS["models"]])

NOTICE = (
    "Tussis is a screening research tool, not a diagnostic device. Metrics are measured on "
    "held-out recordings, overall and within each recording source; see each model card."
)


@bp.get(
    "/models",
    responses=contract.answers(
        {200: contract.json_answer(schemas.ServedModels, "The served bundles.")}
    ),
)
def list_models() -> Response:
    """The model bundles the workers serve, with their model cards"""
    settings = current_app.extensions["tussis.settings"]
    grace, queue = settings.model_grace_s, settings.queue_name
    with session_scope(settings.database_url) as session:
        # Worker children refresh last_seen_at every TUSSIS_MODEL_GRACE / 3.
        active = model_registry.active_diagnosis(session, queue, grace)
        default = model_registry.default_of(active, settings.default_model)
        models = [
            served_model_to_dict(
                m,
                active=model_registry.is_active(m, grace),
                default=default is not None and m.fingerprint == default.fingerprint,
            )
            for m in model_registry.list_served(session, queue)
        ]
    return jsonify(schemas.dump(schemas.ServedModels, {"notice": NOTICE, "models": models}))
