"""``/readyz?require=workers``: ready for jobs only while a worker serving the default
bundle refreshes its heartbeat; plain ``/readyz`` still gates on the database and the
broker alone (the Stack tests poll it before any worker starts)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from api import create_app
from shared import model_registry
from shared.db import session_scope
from shared.tables import ServedModel, utcnow
from tests.api.conftest import assert_error
from tests.conftest import base_settings, migrate

MANIFEST = {"name": "probe", "version": "1.0.0"}


def test_ready_for_jobs_follows_the_diagnosis_bundles_heartbeat(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, sweep_interval_s=10.0)
    migrate(settings.database_url)
    client = create_app(settings).test_client()

    # Plain /readyz keeps routing uploads with no worker, and says there is none.
    plain = client.get("/readyz")
    assert plain.status_code == 200
    checks = plain.get_json()["checks"]
    assert checks["database"] == checks["broker"] == "ok"
    assert checks["workers"].startswith("none: no worker has registered")

    none = client.get("/readyz?require=workers")
    assert_error(none, 503, "no_worker")
    assert none.headers["Retry-After"] == "5"
    assert none.get_json()["checks"]["workers"].startswith("none: no worker has registered")

    with session_scope(settings.database_url) as session:
        # A cough gate alone serves no diagnosis.
        model_registry.register(session, model_registry.COUGH_GATE, "gate", MANIFEST)
    assert_error(client.get("/readyz?require=workers"), 503, "no_worker")

    with session_scope(settings.database_url) as session:
        model_registry.register(session, model_registry.DIAGNOSIS, "model", MANIFEST)
    ready = client.get("/readyz?require=workers")
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "workers": "ok"},
    }

    # Three sweeps missed, and at least a minute: the worker is presumed gone.
    with session_scope(settings.database_url) as session:
        session.execute(update(ServedModel).values(last_seen_at=utcnow() - timedelta(seconds=61)))
    stale = client.get("/readyz?require=workers")
    assert_error(stale, 503, "no_worker")
    assert stale.get_json()["checks"]["workers"].startswith("none: no worker has been seen for")
    plain = client.get("/readyz")
    assert plain.status_code == 200
    assert plain.get_json()["checks"]["workers"].startswith("none: no worker has been seen for")

    with session_scope(settings.database_url) as session:
        model_registry.touch(session, ["model"])
    assert client.get("/readyz?require=workers").status_code == 200


def test_an_unknown_requirement_is_a_parameter_error(tmp_path: Path) -> None:
    settings = base_settings(tmp_path)
    migrate(settings.database_url)
    response = create_app(settings).test_client().get("/readyz?require=everything")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"]
