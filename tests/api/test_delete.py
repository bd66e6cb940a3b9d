"""``DELETE`` of jobs and batches: immediate, idempotent for their owner, a plain 404
for everyone else; and a job deleted while a worker runs it stays deleted. On SQLite
and on a fresh PostgreSQL database of each test's own (the retention purge some
tests run acts on every row in the database)."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient

from api import create_app
from ml.spectrogram import SpectrogramParams
from shared import jobs, retention
from shared.config import Settings, normalise_database_url
from shared.db import session_scope
from shared.storage import AudioNotFound, AudioStorage, make_storage, spectrogram_key
from shared.tables import Deletion, Job, utcnow
from tests.api.conftest import assert_error
from tests.audio_samples import noise, wav
from tests.conftest import base_settings, migrate

MISSING_ID = "00000000-0000-4000-8000-000000000000"


@pytest.fixture(params=["embedded", "services"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "embedded":
        s = base_settings(tmp_path)
    else:
        pg = normalise_database_url(request.getfixturevalue("fresh_postgres_url"))
        s = base_settings(tmp_path, database_url=pg)
    migrate(s.database_url)
    # Bootstrap keys: two callers, each the owner of what they submit.
    return s.changed(api_keys="alice:key-a,bob:key-b")


@pytest.fixture
def storage(settings: Settings) -> AudioStorage:
    return make_storage(settings.storage_url, settings.database_url)


def client_for(settings: Settings, key: str) -> FlaskClient:
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


@pytest.fixture
def alice(settings: Settings) -> FlaskClient:
    return client_for(settings, "key-a")


@pytest.fixture
def bob(settings: Settings) -> FlaskClient:
    return client_for(settings, "key-b")


def submit(client: FlaskClient, data: bytes) -> str:
    response = client.post(
        "/api/v1/jobs",
        data={"audio": (io.BytesIO(data), "cough.wav")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])


def submit_batch(client: FlaskClient, count: int) -> tuple[str, list[str]]:
    files = [(io.BytesIO(wav(noise(0.5, seed=i))), f"r{i}.wav") for i in range(count)]
    response = client.post(
        "/api/v1/batches", data={"files": files}, content_type="multipart/form-data"
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    batch_id = response.get_json()["id"]
    items = client.get(f"/api/v1/batches/{batch_id}/items").get_json()["items"]
    return batch_id, [item["id"] for item in items]


def stored(storage: AudioStorage, key: str) -> bool:
    try:
        storage.get(key)
    except AudioNotFound:
        return False
    return True


def job_row(settings: Settings, job_id: str) -> Job | None:
    with session_scope(settings.database_url) as session:
        return session.get(Job, job_id)


def tombstone(settings: Settings, resource_id: str) -> tuple[str, str] | None:
    with session_scope(settings.database_url) as session:
        found = session.get(Deletion, resource_id)
        return None if found is None else (found.kind, found.owner)


def error_body(response: Any, resource_id: str) -> dict[str, Any]:
    """The error body with the id it names blanked, to compare two 404s."""
    return response.get_json() | {
        "error": {
            **response.get_json()["error"],
            "message": response.get_json()["error"]["message"].replace(resource_id, "<id>"),
        }
    }


# --- jobs ------------------------------------------------------------------------------


def test_delete_is_immediate_and_a_repeat_answers_204_again(
    settings: Settings, storage: AudioStorage, alice: FlaskClient
) -> None:
    job_id = submit(alice, wav(noise(1.0)))
    storage.put(spectrogram_key(job_id), b"png")

    first = alice.delete(f"/api/v1/jobs/{job_id}")
    assert (first.status_code, first.get_data()) == (204, b"")
    # Everything is gone at once, not at the next retention run.
    assert job_row(settings, job_id) is None
    assert not stored(storage, job_id) and not stored(storage, spectrogram_key(job_id))
    assert tombstone(settings, job_id) == ("job", "alice")

    second = alice.delete(f"/api/v1/jobs/{job_id}")
    assert (second.status_code, second.get_data()) == (204, b"")
    assert_error(alice.get(f"/api/v1/jobs/{job_id}"), 404, "job_not_found")
    assert_error(alice.get(f"/api/v1/jobs/{job_id}/spectrogram.png"), 404, "job_not_found")
    assert job_id not in [j["id"] for j in alice.get("/api/v1/jobs").get_json()["jobs"]]


def test_another_owners_delete_is_the_same_404_as_a_missing_id(
    settings: Settings, storage: AudioStorage, alice: FlaskClient, bob: FlaskClient
) -> None:
    job_id = submit(alice, wav(noise(1.0)))
    missing = bob.delete(f"/api/v1/jobs/{MISSING_ID}")
    assert_error(missing, 404, "job_not_found")

    not_his = bob.delete(f"/api/v1/jobs/{job_id}")
    assert_error(not_his, 404, "job_not_found")
    assert error_body(not_his, job_id) == error_body(missing, MISSING_ID)
    assert job_row(settings, job_id) is not None and stored(storage, job_id)  # untouched

    assert alice.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    # Alice's tombstone does not make Bob's DELETE succeed either.
    after = bob.delete(f"/api/v1/jobs/{job_id}")
    assert error_body(after, job_id) == error_body(missing, MISSING_ID)
    assert alice.delete(f"/api/v1/jobs/{MISSING_ID}").status_code == 404


def test_a_failed_storage_delete_still_deletes_the_job_and_the_orphan_purge_takes_the_audio(
    settings: Settings,
    storage: AudioStorage,
    alice: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job_id = submit(alice, wav(noise(1.0)))
    app_storage = alice.application.extensions["tussis.storage"]

    def broken(_keys: object) -> None:
        raise OSError("storage unreachable")

    monkeypatch.setattr(app_storage, "delete_many", broken)
    assert alice.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    assert job_row(settings, job_id) is None
    assert stored(storage, job_id)  # left behind, with no job row: an orphan

    later = utcnow() + retention.ORPHAN_GRACE + timedelta(hours=1)
    assert retention.purge(settings, storage, now=later).orphans_deleted == 1
    assert not stored(storage, job_id)


# --- batches -------------------------------------------------------------------------


def test_batch_delete_removes_items_and_audio_and_is_idempotent(
    settings: Settings, storage: AudioStorage, alice: FlaskClient, bob: FlaskClient
) -> None:
    batch_id, items = submit_batch(alice, 2)
    for job_id in items:
        storage.put(spectrogram_key(job_id), b"png")

    missing = bob.delete(f"/api/v1/batches/{MISSING_ID}")
    assert_error(missing, 404, "batch_not_found")
    not_his = bob.delete(f"/api/v1/batches/{batch_id}")
    assert error_body(not_his, batch_id) == error_body(missing, MISSING_ID)
    assert alice.get(f"/api/v1/batches/{batch_id}").status_code == 200

    assert alice.delete(f"/api/v1/batches/{batch_id}").status_code == 204
    assert alice.delete(f"/api/v1/batches/{batch_id}").status_code == 204
    assert tombstone(settings, batch_id) == ("batch", "alice")
    assert_error(alice.get(f"/api/v1/batches/{batch_id}"), 404, "batch_not_found")
    for job_id in items:
        assert_error(alice.get(f"/api/v1/jobs/{job_id}"), 404, "job_not_found")
        assert job_row(settings, job_id) is None
        assert not stored(storage, job_id) and not stored(storage, spectrogram_key(job_id))
    after = bob.delete(f"/api/v1/batches/{batch_id}")
    assert error_body(after, batch_id) == error_body(missing, MISSING_ID)


# --- a worker running a deleted job ------------------------------------------------------


class FakeModel:
    """Stands in for the diagnosis model; calls ``hook`` when asked to predict."""

    sample_rate = 16000
    id, version = "fake", "1"

    def __init__(self, hook: Callable[[], None]) -> None:
        self.hook = hook
        self.manifest = SimpleNamespace(threshold=0.5, spectrogram=SpectrogramParams())

    def predict(self, clips: list[np.ndarray]) -> list[SimpleNamespace]:
        self.hook()
        return [SimpleNamespace(diagnosis="not sick", score=0.1) for _ in clips]


@pytest.mark.parametrize("moment", ["before_audio_is_read", "before_spectrogram", "before_result"])
def test_a_job_deleted_while_a_worker_runs_it_stays_deleted(
    settings: Settings,
    storage: AudioStorage,
    alice: FlaskClient,
    cough_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    moment: str,
) -> None:
    from worker import pipeline
    from worker.runtime import Models, Runtime

    job_id = submit(alice, cough_file.read_bytes())

    def delete_now(name: str) -> None:
        if name == moment:
            assert alice.delete(f"/api/v1/jobs/{job_id}").status_code == 204

    def load_models() -> Models:
        delete_now("before_audio_is_read")
        return Models(FakeModel(lambda: delete_now("before_result")), None)

    def picture(*_: object) -> bytes:
        delete_now("before_spectrogram")
        return b"png"

    rt = Runtime(settings)
    monkeypatch.setattr(rt, "load_models", load_models)
    monkeypatch.setattr(pipeline, "picture", picture)
    pipeline.Pipeline(rt, lambda _batch_id: None).run([job_id])  # must not raise
    # The picture is drawn when someone asks for it (tussis.spectrogram), after the result.
    pipeline.draw_spectrogram(rt, job_id)  # must not raise either

    assert job_row(settings, job_id) is None  # no result, no failure brought it back
    assert_error(alice.get(f"/api/v1/jobs/{job_id}"), 404, "job_not_found")
    assert alice.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    assert not stored(storage, job_id)
    with session_scope(settings.database_url) as session:
        assert jobs.claim(session, job_id, "w", max_attempts=3, lease_s=60).outcome is (
            jobs.ClaimOutcome.MISSING
        )
    # A spectrogram the worker stored after the DELETE has no job row: the orphan
    # purge removes it once it is a day old.
    assert stored(storage, spectrogram_key(job_id)) is (moment == "before_spectrogram")
    later = utcnow() + retention.ORPHAN_GRACE + timedelta(hours=1)
    retention.purge(settings, storage, now=later)
    assert not stored(storage, spectrogram_key(job_id))
