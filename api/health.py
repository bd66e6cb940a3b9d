"""Liveness (``/healthz``) and readiness (``/readyz``: database and broker reachable)."""

from __future__ import annotations

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint

from api import contract, schemas
from api.errors import error_response
from shared.db import ping

bp = APIBlueprint("health", __name__, abp_tags=[contract.TAGS["health"]])


@bp.get(
    "/healthz",
    responses=contract.answers(
        {200: contract.json_answer(schemas.Alive, "The process answers.")}, keyed=False
    ),
    openapi_extensions=contract.PUBLIC,
)
def healthz() -> Response:
    """Liveness"""
    return jsonify({"status": "ok"})


@bp.get(
    "/readyz",
    responses=contract.answers(
        {
            200: contract.json_answer(schemas.Ready, "The database and the broker answer."),
            503: contract.json_answer(
                schemas.NotReady,
                "Not ready: the database or the broker is unreachable (`not_ready`).",
                {"Retry-After": contract.RETRY_AFTER},
            ),
        },
        keyed=False,
    ),
    openapi_extensions=contract.PUBLIC,
)
def readyz() -> Response:
    """Readiness: the database and the broker are reachable"""
    settings = current_app.extensions["tussis.settings"]
    checks: dict[str, str] = {}
    try:
        ping(settings.database_url)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    try:
        celery = current_app.extensions["celery"]
        with celery.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=settings.publish_timeout_s)
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unreachable: {type(exc).__name__}"
    if all(v == "ok" for v in checks.values()):
        return jsonify({"status": "ready", "checks": checks})
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return error_response(
        503,
        "not_ready",
        f"Not ready: cannot reach the {failing}.",
        {"Retry-After": "5"},
        checks=checks,
    )
