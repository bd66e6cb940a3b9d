"""Keys and audio never reach the logs: a full run through gunicorn and a celery
worker on PostgreSQL + Redis, at DEBUG, with a known key used in every way a
client might use it (header, wrong header, pasted into a URL), then every log
line is searched for it."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import pytest
import requests

from shared.config import PROJECT_ROOT, Settings, normalise_database_url
from tests.api.test_access import create_key
from tests.conftest import base_settings
from tests.stack import TERMINAL, Stack, wait_until

pytestmark = pytest.mark.integration


def test_a_full_run_never_logs_the_key_or_the_audio(
    tmp_path: Path, postgres_url: str, redis_url: str, cough_file: Path
) -> None:
    settings: Settings = base_settings(
        tmp_path,
        database_url=normalise_database_url(postgres_url),
        broker_url=redis_url,
        model_bundle=PROJECT_ROOT / "models" / "default",
    )
    _, key = create_key(settings, "log-probe", f"log-probe-{time.time_ns()}")
    stack = Stack(settings, tmp_path, TUSSIS_LOG_LEVEL="DEBUG")
    audio = cough_file.read_bytes()
    try:
        stack.start_api()
        stack.start_worker()
        auth = {"Authorization": f"Bearer {key}"}
        job = stack.submit(audio, headers=auth)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]

        def finished() -> bool:
            polled = requests.get(f"{stack.url}/api/v1/jobs/{job_id}", headers=auth, timeout=10)
            return polled.json()["status"] in TERMINAL

        wait_until(finished, 120, "the job to finish", 0.5)
        batch = requests.post(
            f"{stack.url}/api/v1/batches",
            files=[("files", ("a.mp3", io.BytesIO(audio)))],
            headers=auth,
            timeout=60,
        )
        assert batch.status_code == 202, batch.text
        # Mistakes a client makes with a key: each is refused, and must not be logged.
        pasted = requests.get(f"{stack.url}/api/v1/jobs?api_key={key}", timeout=10)
        assert pasted.status_code == 400
        wrong_scheme = requests.get(
            f"{stack.url}/api/v1/jobs", headers={"Authorization": f"Token {key}"}, timeout=10
        )
        assert wrong_scheme.status_code == 401
        revoked_like = requests.get(
            f"{stack.url}/api/v1/jobs", headers={"Authorization": f"Bearer {key}x"}, timeout=10
        )
        assert revoked_like.status_code == 401
    finally:
        stack.stop()

    logs = {path.name: path.read_bytes() for path in tmp_path.glob("*.log")}
    assert {"api.log"} <= set(logs) and any(name.startswith("worker") for name in logs)
    # The run was logged (so the search below has something to search) ...
    assert b"GET /api/v1/jobs" in logs["api.log"] and job_id.encode() in b"".join(logs.values())
    secret = key.removeprefix("tus_").encode()
    sample = audio[len(audio) // 2 : len(audio) // 2 + 48]
    for name, text in logs.items():
        # ... and no line holds the key, any part of its secret, or the audio.
        assert secret not in text and secret[:16] not in text, name
        assert sample not in text and base64.b64encode(sample)[:32] not in text, name
