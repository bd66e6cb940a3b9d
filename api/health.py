"""Liveness (``/healthz``) and readiness (``/readyz``: database and broker reachable).

``/readyz`` gates on what the API itself needs to accept jobs (the database and the
broker): a load balancer routes to it, and jobs accepted while no worker runs wait in
the queue. It always reports ``checks.workers`` too; ``/readyz?require=workers`` also
needs that live worker serving the default
(diagnosis) bundle, by the served-bundle registry's heartbeat (the sweeper refreshes
it every ``TUSSIS_SWEEP_INTERVAL``): ``503 no_worker`` without one, for a deployment
check or an alert that the service is up but nothing analyses recordings.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from flask import Response, current_app, jsonify
from flask_openapi3 import APIBlueprint
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy import func, select

from api import contract, schemas
from api.errors import error_response
from shared import model_registry
from shared.config import Settings
from shared.db import ping, session_scope
from shared.tables import ServedModel, utcnow

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


# A worker refreshes its bundles' heartbeat every sweep: three missed sweeps (and at
# least a minute, for a sweep slowed by a busy database) mean no worker is alive.
def worker_silence_s(settings: Settings) -> float:
    return max(60.0, 3 * settings.sweep_interval_s)


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


class ReadyQuery(BaseModel):
    require: Literal["workers"] | SkipJsonSchema[None] = Field(
        default=None,
        description="`workers`: also require a live worker serving the default bundle "
        "(`503 no_worker` otherwise); `checks.workers` reports it either way.",
        # Absent means only the database and the broker: no value to send.
        json_schema_extra=_no_default,
    )


def _workers(settings: Settings) -> str:
    since = utcnow() - timedelta(seconds=worker_silence_s(settings))
    with session_scope(settings.database_url) as session:
        last = session.scalar(
            select(func.max(ServedModel.last_seen_at)).where(
                ServedModel.role == model_registry.DIAGNOSIS
            )
        )
    if last is None:
        return "none: no worker has registered a model bundle"
    if last < since:
        return f"none: no worker has been seen for {(utcnow() - last).total_seconds():.0f} s"
    return "ok"


@bp.get(
    "/readyz",
    responses=contract.answers(
        {
            200: contract.json_answer(
                schemas.Ready,
                "The database and the broker answer (with `require=workers`, a worker serves "
                "the default bundle too).",
            ),
            503: contract.json_answer(
                schemas.NotReady,
                "Not ready: the database or the broker is unreachable (`not_ready`), or, with "
                "`require=workers`, no worker serves the default bundle (`no_worker`).",
                {"Retry-After": contract.RETRY_AFTER},
            ),
        },
        400,  # a `require` other than `workers`
        keyed=False,
    ),
    openapi_extensions=contract.PUBLIC,
)
def readyz(query: ReadyQuery) -> Response:
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
    # Always reported, so a dashboard sees "API up, nothing analyses"; it decides
    # readiness only when asked, since a load balancer must keep routing uploads.
    checks["workers"] = _workers(settings) if checks["database"] == "ok" else "unknown"
    gating = (
        ("database", "broker", "workers") if query.require == "workers" else ("database", "broker")
    )
    if all(checks[k] == "ok" for k in gating):
        return jsonify({"status": "ready", "checks": checks})
    failing = ", ".join(k for k in ("database", "broker") if checks[k] != "ok")
    if failing:
        return error_response(
            503,
            "not_ready",
            f"Not ready: cannot reach the {failing}.",
            {"Retry-After": "5"},
            checks=checks,
        )
    return error_response(
        503,
        "no_worker",
        "Not ready for jobs: no worker serving the default model has been seen in the last "
        f"{worker_silence_s(settings):.0f} s; jobs are accepted and wait in the queue.",
        {"Retry-After": "5"},
        checks=checks,
    )
