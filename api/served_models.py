"""``/api/v1/models``: the bundles the workers serve, with their model cards."""

from __future__ import annotations

from datetime import timedelta

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint

from api import contract, schemas
from api.representation import served_model_to_dict
from shared import model_registry
from shared.db import session_scope
from shared.tables import utcnow

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
    # Workers refresh last_seen_at on every sweep; a bundle unseen for ten sweeps is stale.
    active_since = utcnow() - timedelta(seconds=max(600.0, 10 * settings.sweep_interval_s))
    with session_scope(settings.database_url) as session:
        models = [
            served_model_to_dict(m, active=m.last_seen_at >= active_since)
            for m in model_registry.list_served(session)
        ]
    return jsonify(schemas.dump(schemas.ServedModels, {"notice": NOTICE, "models": models}))
