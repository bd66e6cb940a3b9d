"""Retention (``shared.retention.purge``) on a clock the test controls, on SQLite and
PostgreSQL, with audio in the database and in a ``file://`` directory; and the
``tussis.retention`` task, scheduled by beat in a real ``celery worker``."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from api import create_app
from shared import batches, jobs, retention
from shared.config import PROJECT_ROOT, Settings, normalise_database_url
from shared.db import session_scope
from shared.queue import TASK_RETENTION, celery_config
from shared.storage import AudioBlob, AudioNotFound, AudioStorage, make_storage, spectrogram_key
from shared.tables import Batch, BatchStatus, Deletion, IdempotencyKey, Job, JobStatus, utcnow
from tests.api.conftest import assert_error
from tests.conftest import base_settings, migrate
from tests.stack import BIN, settings_env, wait_until

DAY = timedelta(days=1)
AUDIO_LIMIT = timedelta(days=7)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED)


# --- fixtures and helpers -----------------------------------------------------------


@pytest.fixture(params=["embedded", "services"])
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """SQLite, or a fresh PostgreSQL database of its own: purge acts on every row in
    the database, so counts are only exact when no other test's rows are there."""
    if request.param == "embedded":
        s = base_settings(tmp_path)
    else:
        pg = normalise_database_url(request.getfixturevalue("fresh_postgres_url"))
        s = base_settings(tmp_path, database_url=pg)
    migrate(s.database_url)
    return s


@pytest.fixture(params=["database", "file"])
def settings_and_storage(
    request: pytest.FixtureRequest, db_settings: Settings, tmp_path: Path
) -> tuple[Settings, AudioStorage]:
    s = db_settings
    if request.param == "file":
        s = s.changed(storage_url=f"file://{tmp_path / 'audio'}")
    return s, make_storage(s.storage_url, s.database_url)


def add_job(
    settings: Settings,
    storage: AudioStorage,
    status: JobStatus,
    created_at: datetime,
    *,
    batch_id: str | None = None,
    spectrogram: bool = True,
) -> str:
    """A job row as the service leaves it: audio stored, row committed, and (once
    decoded) a spectrogram; ``created_at`` as given."""
    job_id = jobs.new_job_id()
    storage.put(job_id, b"audio of " + job_id.encode())
    if spectrogram:
        storage.put(spectrogram_key(job_id), b"png of " + job_id.encode())
    with session_scope(settings.database_url) as session:
        jobs.create(
            session,
            job_id=job_id,
            owner="alice",
            filename="cough.wav",
            content_type="audio/wav",
            size_bytes=10,
            sha256="0" * 64,
            duration_s=1.0,
            batch_id=batch_id,
        )
        session.flush()
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(status=status, created_at=created_at, has_spectrogram=spectrogram)
        )
    return job_id


def add_batch(settings: Settings, status: BatchStatus, created_at: datetime) -> str:
    with session_scope(settings.database_url) as session:
        batch = batches.create(session, "alice", None)
        batch.status = status
        batch.created_at = created_at
        return batch.id


def stored(storage: AudioStorage, key: str) -> bool:
    try:
        storage.get(key)
    except AudioNotFound:
        return False
    return True


def row(settings: Settings, job_id: str) -> Job | None:
    with session_scope(settings.database_url) as session:
        return session.get(Job, job_id)


def age_key(settings: Settings, storage: AudioStorage, key: str, written_at: datetime) -> None:
    """Pretend ``key`` was written at ``written_at`` (blob row time, or file mtime)."""
    if settings.storage_url.startswith("file://"):
        path = Path(settings.storage_url.removeprefix("file://")) / key
        os.utime(path, (written_at.timestamp(), written_at.timestamp()))
    else:
        with session_scope(settings.database_url) as session:
            session.execute(
                update(AudioBlob).where(AudioBlob.key == key).values(created_at=written_at)
            )


# --- audio retention ---------------------------------------------------------------


def test_audio_of_finished_jobs_past_the_limit_is_deleted_and_nothing_else(
    settings_and_storage: tuple[Settings, AudioStorage],
) -> None:
    settings, storage = settings_and_storage
    assert settings.audio_retention == AUDIO_LIMIT  # the default
    t0 = utcnow()
    old = {status: add_job(settings, storage, status, t0) for status in JobStatus}
    young = add_job(settings, storage, JobStatus.SUCCEEDED, t0 + DAY)
    now = t0 + AUDIO_LIMIT + timedelta(seconds=1)

    report = retention.purge(settings, storage, now=now)

    assert report.audio_deleted == 2
    for status in FINISHED:
        job = row(settings, old[status])
        assert job is not None and job.status == status  # the result stays
        assert job.audio_deleted_at == now and job.has_spectrogram is False
        assert not stored(storage, old[status])
        assert not stored(storage, spectrogram_key(old[status]))
    # A queued or running job keeps its audio whatever its age: its worker needs it.
    for job_id in (old[JobStatus.QUEUED], old[JobStatus.RUNNING], young):
        job = row(settings, job_id)
        assert job is not None and job.audio_deleted_at is None
        assert stored(storage, job_id) and stored(storage, spectrogram_key(job_id))
    # Every key still has its job row, so none of it counts as an orphan.
    assert report.orphans_deleted == 0

    again = retention.purge(settings, storage, now=now)
    assert again == retention.Report()


def test_audio_exactly_at_the_limit_is_kept(
    settings_and_storage: tuple[Settings, AudioStorage],
) -> None:
    settings, storage = settings_and_storage
    t0 = utcnow()
    job_id = add_job(settings, storage, JobStatus.SUCCEEDED, t0)
    assert retention.purge(settings, storage, now=t0 + AUDIO_LIMIT).audio_deleted == 0
    assert stored(storage, job_id)


def test_audio_kept_forever_when_retention_is_off(db_settings: Settings) -> None:
    settings = db_settings.changed(audio_retention="forever")
    storage = make_storage(settings.storage_url, settings.database_url)
    t0 = utcnow()
    job_id = add_job(settings, storage, JobStatus.SUCCEEDED, t0)
    assert retention.purge(settings, storage, now=t0 + 1000 * DAY) == retention.Report()
    assert stored(storage, job_id)


def test_results_stay_readable_through_the_api_after_audio_retention(
    db_settings: Settings, cough_file: Path
) -> None:
    settings = db_settings.changed(api_keys="alice:key-a")
    storage = make_storage(settings.storage_url, settings.database_url)
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer key-a"
    response = client.post(
        "/api/v1/jobs",
        data={"audio": (io.BytesIO(cough_file.read_bytes()), cough_file.name)},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id = response.get_json()["id"]
    # What a worker leaves: a spectrogram and a result.
    storage.put(spectrogram_key(job_id), b"\x89PNG fake")
    with session_scope(settings.database_url) as session:
        jobs.mark_spectrogram(session, job_id)
        claim = jobs.claim(session, job_id, "w", max_attempts=3, lease_s=60)
    with session_scope(settings.database_url) as session:
        assert jobs.succeed(
            session, job_id, "w", claim.attempt, diagnosis="not sick", score=0.25,
            threshold=0.5, model_id="m", model_version="1", duration_s=1.0,
        )  # fmt: skip
        created = session.get(Job, job_id).created_at  # type: ignore[union-attr]
    assert client.get(f"/api/v1/jobs/{job_id}/spectrogram.png").status_code == 200
    before = client.get(f"/api/v1/jobs/{job_id}").get_json()
    assert before["audio_deleted_at"] is None

    now = created + AUDIO_LIMIT + timedelta(seconds=1)
    assert retention.purge(settings, storage, now=now).audio_deleted == 1

    after = client.get(f"/api/v1/jobs/{job_id}")
    assert after.status_code == 200
    body = after.get_json()
    assert body["result"] == before["result"] and body["result"]["score"] == 0.25
    assert body["audio_deleted_at"] is not None
    assert_error(client.get(f"/api/v1/jobs/{job_id}/spectrogram.png"), 404, "audio_deleted")
    assert not stored(storage, job_id) and not stored(storage, spectrogram_key(job_id))


# --- result retention ----------------------------------------------------------------


def _results_fixture(settings: Settings, storage: AudioStorage, t0: datetime) -> dict[str, str]:
    """Jobs, batches, tombstones and idempotency keys of every kind, accepted at ``t0``
    (or a day later: the young ones)."""
    ids = {
        "old_succeeded": add_job(settings, storage, JobStatus.SUCCEEDED, t0),
        "old_failed": add_job(settings, storage, JobStatus.FAILED, t0),
        "old_queued": add_job(settings, storage, JobStatus.QUEUED, t0),
        "young": add_job(settings, storage, JobStatus.SUCCEEDED, t0 + DAY),
        "completed_batch": add_batch(settings, BatchStatus.COMPLETED, t0),
        "running_batch": add_batch(settings, BatchStatus.RUNNING, t0),
        "abandoned_batch": add_batch(settings, BatchStatus.OPEN, t0),
        "open_busy_batch": add_batch(settings, BatchStatus.OPEN, t0),
        "young_batch": add_batch(settings, BatchStatus.COMPLETED, t0 + DAY),
    }
    for name, status in [
        ("completed_batch", JobStatus.SUCCEEDED),
        ("completed_batch", JobStatus.FAILED),
        ("running_batch", JobStatus.SUCCEEDED),
        ("running_batch", JobStatus.RUNNING),
        ("abandoned_batch", JobStatus.SUCCEEDED),
        ("open_busy_batch", JobStatus.QUEUED),
        ("young_batch", JobStatus.SUCCEEDED),
    ]:
        ids[f"{name}_item_{status}"] = add_job(settings, storage, status, t0, batch_id=ids[name])
    with session_scope(settings.database_url) as session:
        for name, deleted_at in [("old_tombstone", t0), ("young_tombstone", t0 + 40 * DAY)]:
            ids[name] = str(uuid.uuid4())
            retention.record_deletion(session, ids[name], retention.KIND_JOB, "alice", deleted_at)
        for name, expires in [("expired_key", t0 + DAY), ("live_key", t0 + 100 * DAY)]:
            ids[name] = name
            session.add(
                IdempotencyKey(
                    owner="alice", route="jobs", key=name, request_hash="0" * 64,
                    resource_id=None, created_at=t0, expires_at=expires,
                )
            )  # fmt: skip
    return ids


def _exists(settings: Settings, table: type, key: object) -> bool:
    with session_scope(settings.database_url) as session:
        return session.get(table, key) is not None


def test_result_retention_deletes_old_finished_jobs_and_batches(
    settings_and_storage: tuple[Settings, AudioStorage],
) -> None:
    settings, storage = settings_and_storage
    settings = settings.changed(result_retention="30d", audio_retention="forever")
    t0 = utcnow()
    ids = _results_fixture(settings, storage, t0)
    now = t0 + 30 * DAY + timedelta(seconds=1)

    report = retention.purge(settings, storage, now=now)

    assert (report.jobs_deleted, report.batches_deleted) == (2, 2)
    assert (report.tombstones_deleted, report.idempotency_keys_deleted) == (1, 1)
    gone_jobs = [
        "old_succeeded", "old_failed",
        f"completed_batch_item_{JobStatus.SUCCEEDED}", f"completed_batch_item_{JobStatus.FAILED}",
        f"abandoned_batch_item_{JobStatus.SUCCEEDED}",
    ]  # fmt: skip
    for name in gone_jobs:
        assert row(settings, ids[name]) is None, name
        assert not stored(storage, ids[name]) and not stored(storage, spectrogram_key(ids[name]))
    kept_jobs = [
        "old_queued", "young",
        f"running_batch_item_{JobStatus.SUCCEEDED}", f"running_batch_item_{JobStatus.RUNNING}",
        f"open_busy_batch_item_{JobStatus.QUEUED}", f"young_batch_item_{JobStatus.SUCCEEDED}",
    ]  # fmt: skip
    for name in kept_jobs:
        assert row(settings, ids[name]) is not None, name
        assert stored(storage, ids[name]), name
    for name in ("completed_batch", "abandoned_batch"):
        assert not _exists(settings, Batch, ids[name]), name
    for name in ("running_batch", "open_busy_batch", "young_batch"):
        assert _exists(settings, Batch, ids[name]), name
    assert not _exists(settings, Deletion, ids["old_tombstone"])
    assert _exists(settings, Deletion, ids["young_tombstone"])
    assert not _exists(settings, IdempotencyKey, ("alice", "jobs", "expired_key"))
    assert _exists(settings, IdempotencyKey, ("alice", "jobs", "live_key"))

    again = retention.purge(settings, storage, now=now)
    assert again == retention.Report()


def test_results_are_kept_when_result_retention_is_forever(db_settings: Settings) -> None:
    settings = db_settings.changed(audio_retention="forever")
    assert settings.result_retention is None  # the default
    storage = make_storage(settings.storage_url, settings.database_url)
    t0 = utcnow()
    ids = _results_fixture(settings, storage, t0)

    report = retention.purge(settings, storage, now=t0 + 3650 * DAY)

    assert (report.jobs_deleted, report.batches_deleted, report.audio_deleted) == (0, 0, 0)
    for name, value in ids.items():
        if name.endswith(("_tombstone", "_key")):
            continue
        table = Batch if name.endswith("_batch") else Job
        assert _exists(settings, table, value), name
    # Tombstones then last TOMBSTONE_RETENTION (30 days); expired keys go regardless.
    assert (report.tombstones_deleted, report.idempotency_keys_deleted) == (2, 2)


# --- orphans -------------------------------------------------------------------------


def test_orphans_older_than_a_day_are_deleted_and_younger_ones_kept(
    settings_and_storage: tuple[Settings, AudioStorage],
) -> None:
    settings, storage = settings_and_storage
    now = utcnow()
    live = add_job(settings, storage, JobStatus.SUCCEEDED, now)
    keys = {
        "live_audio": live,
        "live_spectrogram": spectrogram_key(live),
        "old_orphan": "orphan-old",
        "old_orphan_spectrogram": spectrogram_key("deleted-job"),
        "young_orphan": "orphan-young",  # an upload whose row is about to be committed
    }
    for name in ("old_orphan", "old_orphan_spectrogram", "young_orphan"):
        storage.put(keys[name], b"bytes")
    for name in ("live_audio", "live_spectrogram", "old_orphan", "old_orphan_spectrogram"):
        age_key(settings, storage, keys[name], now - retention.ORPHAN_GRACE - timedelta(hours=1))
    age_key(settings, storage, keys["young_orphan"], now - timedelta(hours=23))

    report = retention.purge(settings, storage, now=now)

    assert report.orphans_deleted == 2
    assert not stored(storage, keys["old_orphan"])
    assert not stored(storage, keys["old_orphan_spectrogram"])
    for name in ("live_audio", "live_spectrogram", "young_orphan"):
        assert stored(storage, keys[name]), name
    assert retention.purge(settings, storage, now=now).orphans_deleted == 0


def test_orphan_listing_pages_through_many_keys(db_settings: Settings) -> None:
    storage = make_storage(db_settings.storage_url, db_settings.database_url)
    now = utcnow()
    orphans = [f"orphan-{i:04d}" for i in range(retention.BATCH + 7)]
    for key in orphans:
        storage.put(key, b"x")
    report = retention.purge(db_settings, storage, now=now + 2 * DAY)
    assert report.orphans_deleted == len(orphans)
    assert list(storage.keys_older_than(now + 2 * DAY)) == []


# --- the periodic task ---------------------------------------------------------------


def test_retention_task_is_in_the_beat_schedule_on_the_single_job_queue(tmp_path: Path) -> None:
    settings = base_settings(tmp_path, retention_interval_s=120)
    entries = [
        e for e in celery_config(settings)["beat_schedule"].values() if e["task"] == TASK_RETENTION
    ]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["schedule"] == 120
    assert entry["options"]["queue"] == settings.queue_name
    assert 0 < entry["options"]["expires"] <= 120


@pytest.fixture
def worker_settings(tmp_path: Path) -> Settings:
    # Only the bundle's manifest: the worker parent checks it and starts, and each child
    # fails to load the model at once (no head file) instead of spending ~25 s on it;
    # the retention task uses no model.
    bundle = tmp_path / "manifest-only"
    bundle.mkdir()
    shutil.copy(PROJECT_ROOT / "models" / "cough-gate" / "manifest.json", bundle)
    settings = base_settings(tmp_path, model_bundle=bundle, cough_gate_bundle=None)
    migrate(settings.database_url)
    return settings


@pytest.mark.integration
def test_beat_runs_the_retention_task_in_a_real_worker(
    worker_settings: Settings, tmp_path: Path
) -> None:
    settings = worker_settings
    storage = make_storage(settings.storage_url, settings.database_url)
    job_id = add_job(settings, storage, JobStatus.SUCCEEDED, utcnow() - timedelta(minutes=1))
    env = settings_env(
        settings,
        TUSSIS_AUDIO_RETENTION="1s",
        TUSSIS_RETENTION_INTERVAL="1",
    )
    log = tmp_path / "worker.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                str(BIN / "celery"), "-A", "worker.celery_app", "worker", "--beat",
                "--schedule", str(tmp_path / "beat-schedule"), "--concurrency", "1",
                "--loglevel", "INFO", "-n", f"retention-{uuid.uuid4().hex[:6]}@%h",
            ],
            cwd=PROJECT_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:

        def audio_deleted() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker exited: {log.read_text(errors='replace')}")
            job = row(settings, job_id)
            return job is not None and job.audio_deleted_at is not None

        try:
            wait_until(audio_deleted, 90, "the retention task to run", interval=0.5)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{log.read_text(errors='replace')[-4000:]}") from exc
        assert not stored(storage, job_id)
        assert "retention: audio_deleted=1" in log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(timeout=10)
