"""The API in-process (Flask test client) against real databases and brokers:
every rejection has a status, a code and a sentence, and queues nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from shared import jobs
from shared.config import Settings
from shared.db import session_scope
from shared.storage import AudioNotFound, make_storage
from tests.api.conftest import assert_error
from tests.audio_samples import noise, wav
from tests.conftest import IsolatedSettings, configure


def queued_messages(settings: Settings) -> int:
    if settings.broker_url.startswith("redis"):
        return int(redis.Redis.from_url(settings.broker_url).llen(settings.queue_name))
    engine = sa.create_engine(settings.broker_url.removeprefix("sqla+"))
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM kombu_message m JOIN kombu_queue q "
                        "ON m.queue_id = q.id WHERE q.name = :q AND m.visible"
                    ),
                    {"q": settings.queue_name},
                ).scalar_one()
            )
    except sa.exc.OperationalError:
        return 0  # no message was ever published: the tables do not exist yet
    finally:
        engine.dispose()


def job_count(settings: Settings, owner: str) -> int:
    engine = sa.create_engine(settings.database_url)
    with engine.connect() as conn:
        count = conn.execute(
            sa.text("SELECT count(*) FROM jobs WHERE owner = :o"), {"o": owner}
        ).scalar_one()
    engine.dispose()
    return int(count)


@pytest.fixture
def owner(request: pytest.FixtureRequest) -> str:
    """A caller of its own, so tests sharing a database do not see each other's jobs."""
    return f"user-{abs(hash(request.node.nodeid)) % 10**8}"


@pytest.fixture
def app(settings: Settings, owner: str) -> Flask:
    return create_app(configure(settings, api_keys={"key-" + owner: owner, "other-key": "other"}))


@pytest.fixture
def client(app: Flask, owner: str) -> FlaskClient:
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer key-{owner}"
    return c


def upload(client: FlaskClient, data: bytes, name: str = "cough.wav", field: str = "audio"):
    return client.post(
        "/api/v1/jobs",
        data={field: (io.BytesIO(data), name)},
        content_type="multipart/form-data",
    )


def test_submit_answers_202_and_queues_one_message(
    client: FlaskClient, settings: Settings, owner: str, cough_file: Path
) -> None:
    before = queued_messages(settings)
    response = upload(client, cough_file.read_bytes(), cough_file.name)
    assert response.status_code == 202
    body = response.get_json()
    assert response.headers["Location"] == f"/api/v1/jobs/{body['id']}"
    assert 1 <= int(response.headers["Retry-After"]) <= settings.retry_after_s
    assert body["status"] == "queued"
    assert body["result"] is None and body["error"] is None
    assert body["audio"]["filename"] == cough_file.name
    assert body["audio"]["duration_s"] > 0.3
    assert queued_messages(settings) == before + 1
    # The audio is stored where any worker can fetch it.
    storage = make_storage(settings.storage_url, settings.database_url)
    assert storage.get(body["id"]) == cough_file.read_bytes()

    polled = client.get(body["links"]["self"])
    assert polled.status_code == 200
    assert polled.get_json()["status"] == "queued"
    assert "Retry-After" in polled.headers


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda damaged: damaged.read_bytes(), "undecodable_audio"),
        (lambda _: b"", "empty_audio"),
        (lambda _: b"%PDF-1.4 not a recording" * 100, "undecodable_audio"),
        (lambda _: wav(noise(0.2)), "audio_too_short"),
        (lambda _: wav(noise(2.0, level=0.0)), "silent_audio"),
    ],
    ids=["damaged", "empty", "pdf", "too-short", "silent"],
)
def test_unusable_audio_is_rejected_with_422_and_nothing_is_queued(
    client: FlaskClient, settings: Settings, owner: str, damaged_file: Path, make, code: str
) -> None:
    before = queued_messages(settings)
    assert_error(upload(client, make(damaged_file)), 422, code)
    assert queued_messages(settings) == before
    assert job_count(settings, owner) == 0


def test_missing_field_is_400(client: FlaskClient, settings: Settings, owner: str) -> None:
    assert_error(upload(client, wav(noise(1.0)), field="file"), 400, "missing_audio")
    assert_error(client.post("/api/v1/jobs", data={}), 400, "missing_audio")
    assert job_count(settings, owner) == 0


def test_upload_over_the_limit_is_413(settings: Settings, owner: str, cough_file: Path) -> None:
    limit = 100_000
    assert len(cough_file.read_bytes()) < limit  # a small file still passes
    app = create_app(configure(settings, max_upload_bytes=limit, api_keys={"k": owner}))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer k"
    before = queued_messages(settings)
    big = wav(noise(4.0))  # 128 kB
    assert len(big) > limit
    assert_error(upload(client, big), 413, "upload_too_large")
    # Far over the limit: refused from the Content-Length alone.
    assert_error(upload(client, wav(noise(60.0))), 413, "upload_too_large")
    assert queued_messages(settings) == before
    assert job_count(settings, owner) == 0
    assert upload(client, cough_file.read_bytes()).status_code == 202


def test_unknown_job_route_and_method_share_the_error_shape(client: FlaskClient) -> None:
    assert_error(client.get("/api/v1/jobs/does-not-exist"), 404, "job_not_found")
    assert_error(client.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(client.put("/api/v1/jobs"), 405, "method_not_allowed")


def test_api_keys_separate_callers(app: Flask, client: FlaskClient, cough_file: Path) -> None:
    job_id = upload(client, cough_file.read_bytes()).get_json()["id"]
    anonymous = app.test_client()
    assert_error(anonymous.get(f"/api/v1/jobs/{job_id}"), 401, "unauthorized")
    assert_error(upload(anonymous, cough_file.read_bytes()), 401, "unauthorized")
    other = app.test_client()
    other.environ_base["HTTP_X_API_KEY"] = "other-key"
    assert_error(other.get(f"/api/v1/jobs/{job_id}"), 404, "job_not_found")
    assert_error(other.delete(f"/api/v1/jobs/{job_id}"), 404, "job_not_found")
    assert job_id not in [j["id"] for j in other.get("/api/v1/jobs").get_json()["jobs"]]


def test_list_is_newest_first_with_cursor_pages(client: FlaskClient) -> None:
    submitted = [upload(client, wav(noise(0.5, seed=i))).get_json()["id"] for i in range(5)]
    seen: list[str] = []
    url = "/api/v1/jobs?limit=2"
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        body = response.get_json()
        assert len(body["jobs"]) <= 2
        seen += [j["id"] for j in body["jobs"]]
        pages += 1
        url = f"/api/v1/jobs?limit=2&cursor={body['next_cursor']}" if body["next_cursor"] else ""
    assert pages == 3
    assert seen == list(reversed(submitted))


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("limit=0", "invalid_limit"),
        ("limit=abc", "invalid_limit"),
        ("limit=1000", "invalid_limit"),
        ("cursor=bm90LWEtY3Vyc29y", "invalid_cursor"),
        ("cursor=%%%", "invalid_cursor"),
    ],
)
def test_bad_list_parameters_are_400(client: FlaskClient, query: str, code: str) -> None:
    assert_error(client.get(f"/api/v1/jobs?{query}"), 400, code)


def test_delete_removes_the_job_and_its_audio(
    client: FlaskClient, settings: Settings, owner: str
) -> None:
    job_id = upload(client, wav(noise(1.0))).get_json()["id"]
    storage = make_storage(settings.storage_url, settings.database_url)
    assert storage.get(job_id)
    response = client.delete(f"/api/v1/jobs/{job_id}")
    assert response.status_code == 204
    assert_error(client.get(f"/api/v1/jobs/{job_id}"), 404, "job_not_found")
    with pytest.raises(AudioNotFound):
        storage.get(job_id)
    assert job_count(settings, owner) == 0
    # Idempotent: a repeat by the owner answers 204 again (tests/api/test_delete.py).
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.get_json()["checks"]
    assert checks["database"] == checks["broker"] == "ok"
    # Reported, not gating (tests/ops/test_readiness.py): other tests' workers may
    # have registered in this session's database, so either answer is possible here.
    assert checks["workers"] == "ok" or checks["workers"].startswith("none")


def test_not_ready_without_database_or_broker(tmp_path: Path) -> None:
    settings = IsolatedSettings(
        data_dir=tmp_path,
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
        broker_url="redis://127.0.0.1:1/0",
        storage_url="database",
        model_bundle=tmp_path,
        publish_timeout_s=1.0,
    )
    response = create_app(settings).test_client().get("/readyz")
    assert_error(response, 503, "not_ready")
    checks = response.get_json()["checks"]
    assert checks["database"].startswith("unreachable")
    assert checks["broker"].startswith("unreachable")


def test_a_failed_publish_still_accepts_and_the_sweeper_finds_the_job(
    settings: Settings, owner: str, cough_file: Path
) -> None:
    """Broker down after the row is committed: 202, and the next sweep publishes it."""
    dead = configure(
        settings, broker_url="redis://127.0.0.1:1/0", publish_timeout_s=0.5, api_keys={"k": owner}
    )
    client = create_app(dead).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer k"
    response = upload(client, cough_file.read_bytes())
    assert response.status_code == 202
    job_id = response.get_json()["id"]

    def lost(requeue_after_s: float) -> list[str]:
        with session_scope(settings.database_url) as session:
            return [item.job_id for item in jobs.jobs_to_republish(session, requeue_after_s)]

    # The publish failed, so the very next sweep publishes it (no TUSSIS_REQUEUE_AFTER wait).
    assert job_id in lost(3600)
    # One sweeper wins each job: a second sweep right after does not publish it again.
    assert job_id not in lost(1)
    assert job_id in lost(0)
