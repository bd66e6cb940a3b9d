"""The whole system as deployed: gunicorn + celery worker processes on loopback,
on PostgreSQL + Redis and on the embedded defaults (SQLite + SQLite broker)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from ml.negatives import generate
from shared.audio import decode
from shared.config import PROJECT_ROOT, Settings, normalise_database_url
from tests.audio_samples import wav
from tests.conftest import base_settings, configure, migrate
from tests.stack import RedisServer, Stack, free_port, settings_env, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def services_settings(
    tmp_path: Path, postgres_url: str, redis_url: str, tiny_bundle: Path
) -> Settings:
    return base_settings(
        tmp_path,
        database_url=normalise_database_url(postgres_url),
        broker_url=redis_url,
        model_bundle=tiny_bundle,
    )


@pytest.fixture
def embedded_settings(tmp_path: Path, tiny_bundle: Path) -> Settings:
    settings = base_settings(tmp_path, model_bundle=tiny_bundle)
    migrate(settings.database_url)
    return settings


@pytest.fixture
def expected_score(tiny_bundle: Path, cough_file: Path) -> float:
    """What the bundle says about the recording when run directly, outside the service."""
    from ml.model import load_model

    model = load_model(tiny_bundle)
    return model.predict([decode(cough_file.read_bytes(), model.sample_rate).samples])[0].score


def check_succeeded(job: dict, expected_score: float, model_id: str = "tiny-test") -> None:
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["cough_detected"] is True
    # The shipped gate says where it found the cough: [[start_s, end_s], ...].
    assert result["cough_segments"] and all(a < b for a, b in result["cough_segments"])
    assert 0.0 <= result["cough_score"] <= 1.0
    assert result["diagnosis"] in ("sick", "not sick")
    assert result["Diagnóstico"] == result["diagnosis"]
    assert 0.0 <= result["score"] <= 1.0
    assert result["score"] == pytest.approx(expected_score, abs=1e-4)
    assert result["diagnosis"] == ("sick" if result["score"] >= result["threshold"] else "not sick")
    assert (result["model_id"], result["model_version"]) == (model_id, "0.0.1")
    assert job["error"] is None
    assert job["finished_at"] >= job["started_at"] >= job["created_at"]


@pytest.fixture
def stack(services_settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(services_settings, tmp_path)
    yield s
    s.stop()


def test_recording_goes_through_postgres_and_redis(
    stack: Stack, cough_file: Path, damaged_file: Path, expected_score: float
) -> None:
    stack.start_api()
    stack.start_worker()
    response = stack.submit(cough_file.read_bytes(), cough_file.name)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert response.headers["Location"] == f"/api/v1/jobs/{body['id']}"
    assert int(response.headers["Retry-After"]) > 0

    job = stack.wait_done(body["id"])
    check_succeeded(dict(job), expected_score)
    assert job["attempts"] == 1

    # The stored row says the same as the API.
    engine = sa.create_engine(stack.settings.database_url)
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT status, score, model_id FROM jobs WHERE id = :id"), {"id": body["id"]}
        ).one()
    engine.dispose()
    assert row.status == "succeeded" and row.score == pytest.approx(job["result"]["score"])

    # The picture is drawn for whoever asks, never on the analysis path: none
    # exists when the job finishes; the first request queues it (202 +
    # Retry-After), a later one gets the PNG.
    with engine.connect() as conn:
        drawn = conn.execute(
            sa.text("SELECT has_spectrogram FROM jobs WHERE id = :id"), {"id": body["id"]}
        ).scalar_one()
    engine.dispose()
    assert drawn is False
    url = f"{stack.url}{job['links']['spectrogram']}"
    first = requests.get(url, timeout=10)
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "drawing" and int(first.headers["Retry-After"]) >= 1
    picture = wait_until(
        lambda: (r := requests.get(url, timeout=10)).status_code == 200 and r,
        timeout=60,
        what="the drawn spectrogram",
    )
    assert picture.headers["Content-Type"] == "image/png"
    assert picture.content.startswith(b"\x89PNG")

    # Bad input through the real server: a clear error, nothing queued.
    bad = stack.submit(damaged_file.read_bytes(), damaged_file.name)
    assert bad.status_code == 422
    assert bad.json()["error"]["code"] == "undecodable_audio"


def test_job_survives_the_api_host_dying_right_after_202(
    stack: Stack, cough_file: Path, expected_score: float
) -> None:
    stack.start_api()
    response = stack.submit(cough_file.read_bytes(), cough_file.name)
    assert response.status_code == 202
    job_id = response.json()["id"]
    stack.kill_api()  # no worker has run yet: the audio only exists where the API put it
    stack.start_worker()
    stack.start_api()  # a fresh API process (any host) to read the result
    check_succeeded(dict(stack.wait_done(job_id)), expected_score)


def _worker_pid(job: dict, stack: Stack) -> int:
    engine = sa.create_engine(stack.settings.database_url)
    with engine.connect() as conn:
        worker = conn.execute(
            sa.text("SELECT worker FROM jobs WHERE id = :id"), {"id": job["id"]}
        ).scalar_one()
    engine.dispose()
    return int(worker.rsplit(":", 2)[1])


@pytest.fixture
def drill_stack(services_settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    """Each analysis is held 4 s after its claim so the test can kill the child mid-job."""
    s = Stack(configure(services_settings, drill_task_delay_s=4.0, job_max_attempts=2), tmp_path)
    s.start_api()
    s.start_worker()
    yield s
    s.stop()


def _kill_running_child(stack: Stack, job_id: str, attempt: int) -> None:
    job = wait_until(
        lambda: (j := stack.job(job_id))["status"] == "running" and j["attempts"] == attempt and j,
        120,
        f"attempt {attempt} of job {job_id} to start",
        0.05,
    )
    os.kill(_worker_pid(job, stack), signal.SIGKILL)


def test_a_killed_worker_child_is_retried(
    drill_stack: Stack, cough_file: Path, expected_score: float
) -> None:
    job_id = drill_stack.submit(cough_file.read_bytes()).json()["id"]
    _kill_running_child(drill_stack, job_id, attempt=1)
    job = drill_stack.wait_done(job_id)
    check_succeeded(dict(job), expected_score)
    assert job["attempts"] == 2


def test_a_job_that_keeps_killing_its_worker_gives_up(drill_stack: Stack, cough_file: Path) -> None:
    job_id = drill_stack.submit(cough_file.read_bytes()).json()["id"]
    _kill_running_child(drill_stack, job_id, attempt=1)
    _kill_running_child(drill_stack, job_id, attempt=2)
    job = drill_stack.wait_done(job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "worker_lost"
    assert job["result"] is None
    assert job["attempts"] == 2
    # The worker itself keeps serving other jobs.
    other = drill_stack.submit(cough_file.read_bytes()).json()["id"]
    assert drill_stack.wait_done(other)["status"] == "succeeded"


def test_a_job_accepted_while_the_broker_is_down_runs_when_it_returns(
    tmp_path: Path, postgres_url: str, tiny_bundle: Path, cough_file: Path, expected_score: float
) -> None:
    broker = RedisServer(tmp_path)
    broker.start()
    settings = base_settings(
        tmp_path,
        database_url=normalise_database_url(postgres_url),
        broker_url=broker.url,
        model_bundle=tiny_bundle,
        sweep_interval_s=1.0,
        requeue_after_s=3.0,
        publish_timeout_s=1.0,
    )
    stack = Stack(settings, tmp_path)
    try:
        stack.start_api()
        stack.start_worker()
        broker.stop()
        ready = requests.get(f"{stack.url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "not_ready"
        assert ready.json()["checks"]["database"] == "ok"

        response = stack.submit(cough_file.read_bytes(), cough_file.name)
        assert response.status_code == 202  # the row is committed; the sweeper owes it a message
        job_id = response.json()["id"]
        assert stack.job(job_id)["status"] == "queued"

        broker.start()  # same port, empty: the message was never stored
        check_succeeded(dict(stack.wait_done(job_id, timeout=180)), expected_score)
    finally:
        stack.stop()
        broker.stop()


def test_make_run_script_serves_on_embedded_defaults_and_stops_on_ctrl_c(
    embedded_settings: Settings, tmp_path: Path, cough_file: Path, expected_score: float
) -> None:
    """scripts/run-local.sh is what `make run` starts: gunicorn + worker, no servers."""
    port = free_port()
    env = settings_env(embedded_settings, TUSSIS_PORT=port, TUSSIS_API_WORKERS=1)
    for name in ("DATABASE_URL", "TUSSIS_BROKER_URL"):
        env.pop(name)  # the embedded defaults under TUSSIS_DATA_DIR, as on a fresh clone
    log = tmp_path / "run-local.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [str(PROJECT_ROOT / "scripts" / "run-local.sh")],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = Stack(embedded_settings, tmp_path)
    stack.port = port
    stack.worker_log = log
    try:
        banner = f"Tussis is running at http://127.0.0.1:{port}"
        wait_until(lambda: banner in log.read_text(), 60, "the URL banner")
        # Not the default port: the line the CLI and the client library need.
        assert f"export TUSSIS_URL=http://127.0.0.1:{port}" in log.read_text()
        # The banner comes once gunicorn answers, never before.
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).ok
        stack.wait_for_children(1)
        response = stack.submit(cough_file.read_bytes(), cough_file.name)
        assert response.status_code == 202, response.text
        check_succeeded(dict(stack.wait_done(response.json()["id"])), expected_score)
        assert (embedded_settings.data_dir / "tussis.sqlite3").is_file()
        assert (embedded_settings.data_dir / "broker.sqlite3").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert "Stopped." in log.read_text()
    assert code in (0, 130), Stack.tail(log)
    time.sleep(0.5)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_make_run_on_a_busy_port_says_so_and_prints_no_banner(
    embedded_settings: Settings, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = settings_env(embedded_settings, TUSSIS_PORT=port, TUSSIS_API_WORKERS=1)
        done = subprocess.run(
            [str(PROJECT_ROOT / "scripts" / "run-local.sh")],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"port {port} on 127.0.0.1 is busy" in done.stderr
    assert "TUSSIS_PORT" in done.stderr
    assert "Tussis is running" not in done.stdout + done.stderr


def test_yamnet_bundle_with_the_cough_gate_through_the_service(
    tmp_path: Path, services_settings: Settings, tiny_yamnet_bundle: Path, cough_file: Path
) -> None:
    from ml.model import load_model

    model = load_model(tiny_yamnet_bundle, yamnet_model=services_settings.yamnet_model)
    expected = model.predict([decode(cough_file.read_bytes(), 16000).samples])[0].score
    stack = Stack(configure(services_settings, model_bundle=tiny_yamnet_bundle), tmp_path)
    try:
        stack.start_api()
        stack.start_worker()
        job_id = stack.submit(cough_file.read_bytes(), cough_file.name).json()["id"]
        check_succeeded(dict(stack.wait_done(job_id)), expected, model_id="tiny-yamnet")

        # Music passes the door (it is audible audio) but is not a cough.
        _, music = next(generate(seed=99, per_kind=1, kinds=["music"]))
        response = stack.submit(wav(music), "song.wav")
        assert response.status_code == 202
        job = stack.wait_done(response.json()["id"])
        assert job["status"] == "failed"
        assert job["result"] is None
        assert job["error"]["code"] == "no_cough_detected"
        assert job["error"]["cough_detected"] is False
        assert job["error"]["cough_score"] < 0.5

        listing = requests.get(f"{stack.url}/api/v1/models", timeout=10).json()
        assert "not a diagnostic device" in listing["notice"]
        served = {(m["id"], m["role"]): m for m in listing["models"]}
        diagnosis = served[("tiny-yamnet", "diagnosis")]
        assert diagnosis["active"] and diagnosis["backbone"] == "yamnet"
        assert diagnosis["card"]["metrics"]["overall"]["n"] > 0
        assert ("cough-gate", "cough_gate") in served
    finally:
        stack.stop()
