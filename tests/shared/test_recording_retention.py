"""Retention of long recordings and resumable uploads (``shared.retention.purge`` with
the recording store), on a clock the test controls: unfinished uploads go after
``TUSSIS_UPLOAD_RETENTION``, a finished recording's audio after the audio retention
(its result and events stay), the whole recording after the result retention, and the
store's orphans (keys no recording or upload refers to) after a day."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from api import create_app
from shared import recordings, retention
from shared.config import Settings
from shared.db import session_scope
from shared.storage import AudioStorage, make_storage
from shared.tables import Job, JobStatus, Recording, RecordingEvent, Upload, utcnow
from tests.audio_samples import noise, wav
from tests.conftest import base_settings, migrate

TUS = {"Tus-Resumable": "1.0.0", "Authorization": "Bearer k"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = base_settings(tmp_path, api_keys={"k": "alice"}, result_retention="30d")
    migrate(s.database_url)
    return s


@pytest.fixture
def store(settings: Settings) -> AudioStorage:
    return make_storage(settings.recording_storage_url, settings.database_url)


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    return create_app(settings).test_client()


def keys(store: AudioStorage) -> list[str]:
    return sorted(store.keys_older_than(utcnow() + timedelta(days=365)))


def purge(settings: Settings, store: AudioStorage, days: float) -> retention.Report:
    return retention.purge(
        settings,
        make_storage(settings.storage_url, settings.database_url),
        now=utcnow() + timedelta(days=days),
        recording_storage=store,
    )


def test_an_unfinished_upload_is_purged_after_its_retention(
    settings: Settings, store: AudioStorage, client: FlaskClient
) -> None:
    url = client.post("/api/v1/uploads", headers={**TUS, "Upload-Length": "9000"}).headers[
        "Location"
    ]
    patched = client.patch(
        url,
        data=b"x" * 4000,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert patched.status_code == 204 and len(keys(store)) == 1
    assert purge(settings, store, 0.5).uploads_deleted == 0  # not a day idle yet
    report = purge(settings, store, 1.5)
    assert report.uploads_deleted == 1
    assert keys(store) == [] and client.head(url, headers=TUS).status_code == 404


def _finished_recording(settings: Settings, client: FlaskClient) -> str:
    body = client.post(
        "/api/v1/recordings",
        data={"audio": (io.BytesIO(wav(noise(3.0, level=0.1))), "n.wav")},
        content_type="multipart/form-data",
        headers={"Authorization": "Bearer k"},
    ).get_json()
    # As a worker would leave it: its work done, counted, with one event.
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Job).where(Job.recording_id == body["id"]).values(status=JobStatus.SUCCEEDED)
        )
        session.execute(
            update(Recording)
            .where(Recording.id == body["id"])
            .values(status=JobStatus.SUCCEEDED, result={"cough_count": 1})
        )
        session.add(
            RecordingEvent(recording_id=body["id"], seq=1, start_s=1.0, end_s=1.3, score=0.9)
        )
    return str(body["id"])


def test_a_recordings_audio_then_the_recording_expire(
    settings: Settings, store: AudioStorage, client: FlaskClient
) -> None:
    recording_id = _finished_recording(settings, client)
    assert keys(store) == [recordings.audio_key(recording_id)]
    # A stray key of nobody's (a crash between the store and the row) goes a day later.
    store.put("rec-00000000-0000-0000-0000-000000000000.audio", b"lost")
    assert purge(settings, store, 1.5).orphans_deleted == 1
    report = purge(settings, store, 8)  # past the 7-day audio retention
    assert report.recording_audio_deleted == 1 and keys(store) == []
    with session_scope(settings.database_url) as session:
        row = session.get(Recording, recording_id)
        assert row is not None and row.audio_deleted_at is not None and row.result
        assert recordings.events_page(session, recording_id, 0, 10)
    assert purge(settings, store, 31).recordings_deleted == 1
    with session_scope(settings.database_url) as session:
        assert session.get(Recording, recording_id) is None
        assert session.query(Job).filter(Job.recording_id == recording_id).count() == 0
        assert session.query(Upload).count() == 0
