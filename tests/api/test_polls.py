"""The hot paths in-process, on SQLite and on PostgreSQL + Redis: a poll is one statement
(the database key checked in it, so a revoked key fails on its very next poll), ETags
and ``304``, ``Prefer: wait`` (woken by the embedded backend's look at the rows), the
cost of a submission in statements and commits, and one pending picture per job."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, event, make_url, select

from api import create_app
from api.waiting import MAX_WAIT_S, capacity, requested_wait
from shared import api_keys, jobs
from shared.config import Settings
from shared.db import session_scope
from shared.tables import Job, JobStatus, utcnow
from tests.api.conftest import assert_error
from tests.api.test_jobs import queued_messages
from tests.audio_samples import noise, pcm16_wav
from tests.conftest import base_settings, migrate


@pytest.fixture
def key(settings: Settings) -> Iterator[tuple[str, str]]:
    """A database key (``tussis keys create``'s kind) of an owner of its own, revoked
    afterwards: the session's PostgreSQL database is shared with tests of open mode."""
    with session_scope(settings.database_url) as session:
        new = api_keys.create(session, "polls", f"polls-{time.monotonic_ns()}")
    yield new.id, new.key
    with session_scope(settings.database_url) as session:
        api_keys.revoke(session, new.id)


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask, key: tuple[str, str]) -> FlaskClient:
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key[1]}"
    return c


def submit(client: FlaskClient, seconds: float = 1.0) -> str:
    response = client.post(
        "/api/v1/jobs",
        data={"audio": (io.BytesIO(pcm16_wav(noise(seconds))), "cough.wav")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])


def submit_batch(client: FlaskClient, files: int = 3) -> str:
    response = client.post(
        "/api/v1/batches",
        data={
            "files": [(io.BytesIO(pcm16_wav(noise(0.6, seed=i))), f"{i}.wav") for i in range(files)]
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])


@contextmanager
def counted(settings: Settings) -> Iterator[dict[str, int]]:
    """The statements and commits that this process sends to the job database meanwhile
    (not the embedded broker's: a publish is counted in the broker's queue)."""
    seen = {"statements": 0, "commits": 0}
    database = make_url(settings.database_url)

    def ours(conn: Any) -> bool:
        return bool(conn.engine.url == database)

    def statement(conn: Any, *_: Any) -> None:
        seen["statements"] += ours(conn)

    def commit(conn: Any) -> None:
        seen["commits"] += ours(conn)

    event.listen(Engine, "before_cursor_execute", statement)
    event.listen(Engine, "commit", commit)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", statement)
        event.remove(Engine, "commit", commit)


def finish(settings: Settings, job_id: str) -> None:
    """What a worker does to a job: claim it, then record a result."""
    with session_scope(settings.database_url) as session:
        claim = jobs.claim(session, job_id, "test-worker", max_attempts=3, lease_s=60)
        assert claim.outcome is jobs.ClaimOutcome.CLAIMED
    with session_scope(settings.database_url) as session:
        assert jobs.succeed(
            session, job_id, "test-worker", claim.attempt, diagnosis="not sick", score=0.2,
            threshold=0.5, model_id="m", model_version="1", duration_s=1.0,
        )  # fmt: skip


# --- one round trip ---------------------------------------------------------------------


def test_a_poll_is_one_statement_and_no_commit(client: FlaskClient, settings: Settings) -> None:
    job_id = submit(client)
    batch_id = submit_batch(client)
    client.get(f"/api/v1/jobs/{job_id}")  # the first read of a connection sets it up
    for url in (
        f"/api/v1/jobs/{job_id}",
        f"/api/v1/batches/{batch_id}",
        f"/api/v1/batches/{batch_id}/items",
    ):
        with counted(settings) as seen:
            response = client.get(url)
            assert response.status_code == 200, response.get_data(as_text=True)
        # The key and the row together: no statement for the key, none for the model's
        # notes, no BEGIN/COMMIT and no pre-ping.
        assert seen == {"statements": 1, "commits": 0}, url


def test_a_revoked_key_fails_on_its_next_poll(
    client: FlaskClient, settings: Settings, key: tuple[str, str]
) -> None:
    job_id = submit(client)
    batch_id = submit_batch(client)
    batch_url = f"/api/v1/batches/{batch_id}"
    urls = [f"/api/v1/jobs/{job_id}", batch_url, f"{batch_url}/items"]
    for url in urls:
        assert client.get(url).status_code == 200
    with session_scope(settings.database_url) as session:
        assert api_keys.revoke(session, key[0])
    for url in urls:
        assert_error(client.get(url), 401, "invalid_api_key")
        assert_error(client.get(url, headers={"Prefer": "wait=5"}), 401, "invalid_api_key")


def test_another_owners_job_is_a_404_in_the_same_statement(
    app: Flask, client: FlaskClient, settings: Settings
) -> None:
    job_id = submit(client)
    with session_scope(settings.database_url) as session:
        other = api_keys.create(session, "other", f"other-{time.monotonic_ns()}")
    try:
        response = app.test_client().get(
            f"/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {other.key}"}
        )
        assert_error(response, 404, "job_not_found")
    finally:
        with session_scope(settings.database_url) as session:
            api_keys.revoke(session, other.id)


# --- conditional requests ------------------------------------------------------------------


def test_304_for_an_unchanged_job_then_200_after_it_changes(
    client: FlaskClient, settings: Settings
) -> None:
    job_id = submit(client)
    url = f"/api/v1/jobs/{job_id}"
    first = client.get(url)
    etag = first.headers["ETag"]
    assert etag.startswith('"') and not etag.startswith("W/")  # strong
    same = client.get(url, headers={"If-None-Match": etag})
    assert same.status_code == 304 and same.get_data() == b""
    assert same.headers["ETag"] == etag and int(same.headers["Retry-After"]) >= 1
    finish(settings, job_id)
    changed = client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.get_json()["status"] == "succeeded"
    assert changed.headers["ETag"] != etag
    again = client.get(url, headers={"If-None-Match": changed.headers["ETag"]})
    assert again.status_code == 304


def test_304_for_an_unchanged_batch_and_item_page_then_200_after_an_item_changes(
    client: FlaskClient, settings: Settings
) -> None:
    batch_id = submit_batch(client)
    urls = (f"/api/v1/batches/{batch_id}", f"/api/v1/batches/{batch_id}/items")
    tags = {}
    for url in urls:
        tags[url] = client.get(url).headers["ETag"]
        assert client.get(url, headers={"If-None-Match": tags[url]}).status_code == 304
    with session_scope(settings.database_url) as session:
        first = session.scalars(
            select(Job.id).where(Job.batch_id == batch_id).order_by(Job.batch_seq).limit(1)
        ).one()
    finish(settings, first)
    for url, etag in tags.items():
        response = client.get(url, headers={"If-None-Match": etag})
        assert response.status_code == 200, url
        assert response.headers["ETag"] != etag


# --- long polls ------------------------------------------------------------------------------


def test_prefer_wait_is_parsed_as_rfc_7240_says() -> None:
    assert requested_wait("wait=10") == 10
    assert requested_wait("respond-async, wait=5") == 5
    assert requested_wait('return=minimal; foo="bar", WAIT = "7"') == 7
    assert requested_wait("wait=3600") == MAX_WAIT_S
    for ignored in (None, "", "wait=0", "wait=-1", "wait=soon", "handling=lenient"):
        assert requested_wait(ignored) is None
    assert capacity(300) == 292 and capacity(4) == 2 and capacity(2) == 1


def test_a_long_poll_answers_when_the_job_finishes_and_a_finished_one_at_once(
    client: FlaskClient, settings: Settings
) -> None:
    """The worker's write is played by a thread here (a real worker wakes it in
    tests/integration/test_long_polls.py); on SQLite the API's own look at the rows
    wakes it, on PostgreSQL + Redis the notification this test sends, as a worker does."""
    job_id = submit(client)
    url = f"/api/v1/jobs/{job_id}"
    notifier = client.application.extensions["tussis.notifier"]

    def worker() -> None:
        time.sleep(1.0)
        finish(settings, job_id)
        notifier.jobs([job_id])

    thread = threading.Thread(target=worker)
    started = time.monotonic()
    thread.start()
    response = client.get(url, headers={"Prefer": "wait=30"})
    waited = time.monotonic() - started
    thread.join()
    assert response.status_code == 200
    assert response.get_json()["status"] == "succeeded"
    assert response.headers["Preference-Applied"] == "wait=30"
    assert waited < 30  # woken, not timed out
    # Finished already: answered at once, still as asked.
    done = client.get(url, headers={"Prefer": "wait=30"})
    assert done.headers["Preference-Applied"] == "wait=30"
    assert done.get_json()["status"] == "succeeded"


def test_a_long_poll_that_times_out_answers_the_current_state(client: FlaskClient) -> None:
    job_id = submit(client)
    response = client.get(f"/api/v1/jobs/{job_id}", headers={"Prefer": "wait=1"})
    assert response.status_code == 200
    assert response.get_json()["status"] == "queued"
    assert response.headers["Preference-Applied"] == "wait=1"
    assert 1 <= int(response.headers["Retry-After"]) <= 30
    assert client.application.extensions["tussis.waiters"].waiting == 0


# --- submissions -------------------------------------------------------------------------------


def test_a_submission_is_one_transaction_and_one_publish(
    client: FlaskClient, settings: Settings
) -> None:
    submit(client)  # connections, the broker's queue declared
    before = queued_messages(settings)
    with counted(settings) as seen:
        submit(client)
    assert queued_messages(settings) == before + 1
    # The key's lookup; the audio's INSERT and the row's INSERT; one COMMIT.
    assert seen == {"statements": 3, "commits": 1}


def test_a_batch_chunk_is_one_insert_per_table_and_one_commit(
    client: FlaskClient, settings: Settings
) -> None:
    app = client.application
    submit_batch(client, files=1)
    seen = {}
    for chunk in (8, 4):
        app.extensions["tussis.settings"] = settings.changed(batch_chunk_size=chunk)
        with counted(settings) as seen[chunk]:
            submit_batch(client, files=8)
    # A chunk more costs the audio's INSERT, the rows' INSERT and one commit, whatever
    # its size: nothing per recording.
    extra = {k: seen[4][k] - seen[8][k] for k in seen[8]}
    assert extra == {"statements": 2, "commits": 1}, seen
    # The rest of the request: the key; the batch's INSERT; the items already there and
    # the next number; the total; closing; whether it is complete; the answer's read.
    assert seen[8] == {"statements": 11, "commits": 6}, seen


# --- pictures ---------------------------------------------------------------------------


def test_a_picture_asked_for_many_times_is_rendered_once(
    client: FlaskClient, settings: Settings
) -> None:
    job_id = submit(client)
    finish(settings, job_id)
    before = queued_messages(settings)
    for _ in range(5):
        response = client.get(f"/api/v1/jobs/{job_id}/spectrogram.png")
        assert response.status_code == 202 and response.headers["Retry-After"] == "1"
    assert queued_messages(settings) == before + 1
    # A render asked for long ago is presumed lost: the next request asks again.
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == JobStatus.SUCCEEDED
        job.spectrogram_asked_at = utcnow().replace(year=2000)
    client.get(f"/api/v1/jobs/{job_id}/spectrogram.png")
    assert queued_messages(settings) == before + 2


# --- Retry-After -----------------------------------------------------------------------


def test_retry_after_comes_from_the_place_in_the_queue_and_the_completion_rate(
    tmp_path: Path,
) -> None:
    """On a database of its own (the place in the queue counts every owner's jobs)."""
    from api import pacing

    settings = base_settings(tmp_path, api_keys={"k": "pacer"})
    migrate(settings.database_url)
    client = create_app(settings).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer k"
    ids = [submit(client) for _ in range(4)]
    pacing._rate.clear()
    # Nothing finished in the last minute: a second per job ahead.
    assert client.get(f"/api/v1/jobs/{ids[3]}").headers["Retry-After"] == "4"
    assert client.get(f"/api/v1/jobs/{ids[0]}").headers["Retry-After"] == "1"
    # Thirty finished in the last minute (0.5/s): 3 ahead + itself take 8 s.
    done = [submit(client) for _ in range(30)]
    for job_id in done:
        finish(settings, job_id)
    pacing._rate.clear()
    assert client.get(f"/api/v1/jobs/{ids[3]}").headers["Retry-After"] == "8"
    # Running: a short value; bounded by TUSSIS_RETRY_AFTER.
    with session_scope(settings.database_url) as session:
        jobs.claim(session, ids[0], "w", max_attempts=3, lease_s=60)
    assert client.get(f"/api/v1/jobs/{ids[0]}").headers["Retry-After"] == "1"
    pacing._rate.clear()
    capped = create_app(settings.changed(retry_after_s=5)).test_client()
    capped.environ_base["HTTP_AUTHORIZATION"] = "Bearer k"
    assert capped.get(f"/api/v1/jobs/{ids[3]}").headers["Retry-After"] == "5"
