"""``Idempotency-Key`` on ``POST /api/v1/jobs`` and ``POST /api/v1/batches``: a retried
request never creates a second resource. In-process (Flask test client) on SQLite and
on PostgreSQL + Redis; the concurrent case also through a real gunicorn."""

from __future__ import annotations

import io
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api import create_app
from api.idempotency import request_fingerprint
from shared import idempotency
from shared.config import Settings
from shared.db import session_scope
from shared.tables import utcnow
from tests.api.conftest import assert_error
from tests.conftest import configure
from tests.stack import Stack

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


@pytest.fixture
def owners(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Two callers of this test's own (tests share the PostgreSQL database)."""
    tag = abs(hash(request.node.nodeid)) % 10**8
    return f"alice-{tag}", f"bob-{tag}"


@pytest.fixture
def app_settings(settings: Settings, owners: tuple[str, str]) -> Settings:
    alice, bob = owners
    return configure(
        settings,
        api_keys=f"{alice}:key-a,{bob}:key-b",
        callback_allowed_networks="127.0.0.1/32",  # callback URLs below need no DNS
    )


def client_for(app_settings: Settings, token: str) -> FlaskClient:
    c = create_app(app_settings).test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return c


@pytest.fixture
def alice(app_settings: Settings) -> FlaskClient:
    return client_for(app_settings, "key-a")


@pytest.fixture
def bob(app_settings: Settings) -> FlaskClient:
    return client_for(app_settings, "key-b")


def post_job(
    client: FlaskClient, data: bytes, name: str = "cough.wav", key: str | None = None
) -> TestResponse:
    return client.post(
        "/api/v1/jobs",
        data={"audio": (io.BytesIO(data), name)},
        content_type="multipart/form-data",
        headers={KEY: key} if key is not None else {},
    )


def post_batch(
    client: FlaskClient, files: list[tuple[str, bytes]], key: str | None = None, **fields: str
) -> TestResponse:
    data: dict = {"files": [(io.BytesIO(b), name) for name, b in files], **fields}
    return client.post(
        "/api/v1/batches",
        data=data,
        content_type="multipart/form-data",
        headers={KEY: key} if key is not None else {},
    )


def count(settings: Settings, table: str, owner: str) -> int:
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(f"SELECT count(*) FROM {table} WHERE owner = :o"), {"o": owner}
                ).scalar_one()
            )
    finally:
        engine.dispose()


def expire_keys(settings: Settings, owner: str) -> None:
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE idempotency_keys SET expires_at = :t WHERE owner = :o"),
                {"t": (utcnow() - timedelta(seconds=1)).replace(tzinfo=None), "o": owner},
            )
    finally:
        engine.dispose()


# --- jobs ---------------------------------------------------------------------------------


def test_job_retry_with_the_same_key_and_body_returns_the_first_job(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_file: Path
) -> None:
    audio = cough_file.read_bytes()
    first = post_job(alice, audio, cough_file.name, key="job-retry-1")
    assert first.status_code == 202, first.get_data(as_text=True)
    assert REPLAYED not in first.headers
    second = post_job(alice, audio, cough_file.name, key="job-retry-1")
    assert second.status_code == 200, second.get_data(as_text=True)
    assert second.headers[REPLAYED] == "true"
    job_id = first.get_json()["id"]
    assert second.get_json()["id"] == job_id
    assert second.headers["Location"] == f"/api/v1/jobs/{job_id}"
    assert second.get_json() == alice.get(f"/api/v1/jobs/{job_id}").get_json()
    assert count(settings, "jobs", owners[0]) == 1


def test_job_without_a_key_is_created_each_time(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_file: Path
) -> None:
    audio = cough_file.read_bytes()
    assert post_job(alice, audio).status_code == 202
    assert post_job(alice, audio).status_code == 202
    assert count(settings, "jobs", owners[0]) == 2


def test_job_key_reused_with_another_body_is_422(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_files: list[Path]
) -> None:
    a, b = cough_files[4], cough_files[5]
    assert post_job(alice, a.read_bytes(), a.name, key="k").status_code == 202
    assert_error(post_job(alice, b.read_bytes(), a.name, key="k"), 422, "idempotency_key_reused")
    # The file name is part of the request too.
    assert_error(
        post_job(alice, a.read_bytes(), "other.mp3", key="k"), 422, "idempotency_key_reused"
    )
    assert count(settings, "jobs", owners[0]) == 1


@pytest.mark.parametrize(
    "key", ["", "x" * 256, "caf\u00e9", "tab\there"], ids=["empty", "256", "latin1", "tab"]
)
def test_malformed_key_is_400_and_creates_nothing(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_file: Path, key: str
) -> None:
    assert_error(post_job(alice, cough_file.read_bytes(), key=key), 400, "invalid_idempotency_key")
    assert count(settings, "jobs", owners[0]) == 0
    assert count(settings, "idempotency_keys", owners[0]) == 0


def test_longest_printable_key_is_accepted(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_file: Path
) -> None:
    key = "".join(chr(c) for c in range(0x21, 0x7F)) * 3  # 282 printable characters
    response = post_job(alice, cough_file.read_bytes(), key=key[:255])
    assert response.status_code == 202, response.get_data(as_text=True)


def test_expired_key_creates_a_new_job(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_file: Path
) -> None:
    audio = cough_file.read_bytes()
    first = post_job(alice, audio, key="daily").get_json()["id"]
    expire_keys(settings, owners[0])
    again = post_job(alice, audio, key="daily")
    assert again.status_code == 202 and REPLAYED not in again.headers
    assert again.get_json()["id"] != first
    assert count(settings, "jobs", owners[0]) == 2
    # The key now stands for the new job.
    replay = post_job(alice, audio, key="daily")
    assert replay.status_code == 200 and replay.get_json()["id"] == again.get_json()["id"]


def test_two_owners_use_the_same_key_independently(
    alice: FlaskClient, bob: FlaskClient, settings: Settings, owners: tuple[str, str],
    cough_files: list[Path],
) -> None:  # fmt: skip
    a, b = cough_files[4].read_bytes(), cough_files[5].read_bytes()
    job_a = post_job(alice, a, key="shared-key")
    job_b = post_job(bob, b, key="shared-key")  # another body: no conflict across owners
    assert job_a.status_code == job_b.status_code == 202
    assert job_a.get_json()["id"] != job_b.get_json()["id"]
    assert post_job(bob, b, key="shared-key").get_json()["id"] == job_b.get_json()["id"]
    assert post_job(alice, a, key="shared-key").get_json()["id"] == job_a.get_json()["id"]
    assert count(settings, "jobs", owners[0]) == count(settings, "jobs", owners[1]) == 1


def test_rejected_request_releases_its_key(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], damaged_file: Path,
    cough_file: Path,
) -> None:  # fmt: skip
    assert_error(post_job(alice, damaged_file.read_bytes(), key="fix-me"), 422, "undecodable_audio")
    assert count(settings, "idempotency_keys", owners[0]) == 0
    # The corrected retry under the same key is a new request, not a replayed rejection.
    fixed = post_job(alice, cough_file.read_bytes(), key="fix-me")
    assert fixed.status_code == 202, fixed.get_data(as_text=True)
    assert count(settings, "jobs", owners[0]) == 1


def test_key_in_progress_is_409_with_retry_after(
    alice: FlaskClient, app_settings: Settings, owners: tuple[str, str], cough_file: Path
) -> None:
    audio = cough_file.read_bytes()
    app = create_app(app_settings)
    with app.test_request_context(
        "/api/v1/jobs",
        method="POST",
        data={"audio": (io.BytesIO(audio), "cough.wav")},
        content_type="multipart/form-data",
    ):
        fingerprint = request_fingerprint()
    # What a concurrent first request leaves while it works: a claim without a resource.
    with session_scope(app_settings.database_url) as session:
        claim = idempotency.claim(session, owners[0], "jobs", "busy", fingerprint)
    assert claim.outcome is idempotency.Outcome.CLAIMED
    response = post_job(alice, audio, key="busy")
    assert_error(response, 409, "idempotency_key_in_use")
    assert response.headers["Retry-After"] == "1"
    # Another body under a busy key is told so at once rather than to wait.
    assert_error(post_job(alice, audio + b"\0", key="busy"), 422, "idempotency_key_reused")
    assert count(app_settings, "jobs", owners[0]) == 0


def test_abandoned_claim_is_taken_over(
    alice: FlaskClient, app_settings: Settings, owners: tuple[str, str], cough_file: Path
) -> None:
    """A claim whose request died (worker killed) does not block its key for a day."""
    with session_scope(app_settings.database_url) as session:
        idempotency.claim(
            session, owners[0], "jobs", "orphan", "0" * 64, now=utcnow() - timedelta(hours=2)
        )
    response = post_job(alice, cough_file.read_bytes(), key="orphan")
    assert response.status_code == 202, response.get_data(as_text=True)


def test_claims_race_and_exactly_one_wins(settings: Settings, owners: tuple[str, str]) -> None:
    """The primary key decides between concurrent claims (threads, separate connections)."""
    outcomes: list[idempotency.Outcome] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        with session_scope(settings.database_url) as session:
            outcomes.append(idempotency.claim(session, owners[0], "jobs", "race", "h").outcome)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes).count(idempotency.Outcome.CLAIMED) == 1
    assert set(outcomes) == {idempotency.Outcome.CLAIMED, idempotency.Outcome.IN_PROGRESS}


# --- batches --------------------------------------------------------------------------------


def test_batch_retry_with_the_same_key_and_body_returns_the_first_batch(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_files: list[Path]
) -> None:
    files = [(f"site/{f.name}", f.read_bytes()) for f in cough_files[:2]]
    first = post_batch(alice, files, key="batch-1", open="true")
    assert first.status_code == 202, first.get_data(as_text=True)
    second = post_batch(alice, files, key="batch-1", open="true")
    assert second.status_code == 200, second.get_data(as_text=True)
    assert second.headers[REPLAYED] == "true"
    batch_id = first.get_json()["id"]
    assert second.get_json()["id"] == batch_id
    assert second.headers["Location"] == f"/api/v1/batches/{batch_id}"
    # The replay is the batch as it is now; only the clock fields move between reads.
    now = alice.get(f"/api/v1/batches/{batch_id}").get_json()
    assert _without_clock(second.get_json()) == _without_clock(now)
    assert count(settings, "batches", owners[0]) == 1
    assert count(settings, "jobs", owners[0]) == 2


def _without_clock(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("elapsed_s", "eta_s")}


@pytest.mark.parametrize(
    "change",
    ["callback_url", "file_order", "file_content", "open"],
)
def test_batch_key_reused_with_another_body_is_422(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_files: list[Path],
    change: str,
) -> None:  # fmt: skip
    files = [(f.name, f.read_bytes()) for f in cough_files[:2]]
    fields = {"callback_url": "http://127.0.0.1:9/hook", "open": "true"}
    assert post_batch(alice, files, key="b", **fields).status_code == 202
    if change == "callback_url":
        fields["callback_url"] = "http://127.0.0.1:9/other"
    elif change == "file_order":
        files.reverse()
    elif change == "file_content":
        files[1] = (files[1][0], cough_files[2].read_bytes())
    else:
        fields["open"] = "false"
    assert_error(post_batch(alice, files, key="b", **fields), 422, "idempotency_key_reused")
    assert count(settings, "batches", owners[0]) == 1


def test_batch_archive_is_fingerprinted_and_replayed(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_files: list[Path]
) -> None:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in cough_files[:2]:
            zf.writestr(f"a/{f.name}", f.read_bytes())

    def send(archive: bytes) -> TestResponse:
        return alice.post(
            "/api/v1/batches",
            data={"archive": (io.BytesIO(archive), "batch.zip")},
            content_type="multipart/form-data",
            headers={KEY: "zip-1"},
        )

    first = send(buf.getvalue())
    assert first.status_code == 202, first.get_data(as_text=True)
    assert first.get_json()["accepted"] == 2
    replay = send(buf.getvalue())
    assert replay.status_code == 200 and replay.get_json()["id"] == first.get_json()["id"]
    assert_error(send(buf.getvalue() + b"\0"), 422, "idempotency_key_reused")
    assert count(settings, "batches", owners[0]) == 1


def test_batch_and_job_routes_do_not_share_keys(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_file: Path
) -> None:
    audio = cough_file.read_bytes()
    assert post_job(alice, audio, key="same").status_code == 202
    assert post_batch(alice, [(cough_file.name, audio)], key="same").status_code == 202
    assert count(settings, "idempotency_keys", owners[0]) == 2


def test_expired_batch_key_creates_a_new_batch(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_file: Path
) -> None:
    files = [(cough_file.name, cough_file.read_bytes())]
    first = post_batch(alice, files, key="nightly").get_json()["id"]
    expire_keys(settings, owners[0])
    again = post_batch(alice, files, key="nightly")
    assert again.status_code == 202 and again.get_json()["id"] != first
    assert count(settings, "batches", owners[0]) == 2


def test_rejected_batch_releases_its_key(
    alice: FlaskClient, settings: Settings, owners: tuple[str, str], cough_file: Path
) -> None:
    files = [(cough_file.name, cough_file.read_bytes())]
    assert_error(
        post_batch(alice, files, key="cb", callback_url="ftp://nope"), 400, "invalid_callback_url"
    )
    assert count(settings, "idempotency_keys", owners[0]) == 0
    assert post_batch(alice, files, key="cb").status_code == 202


# --- concurrency through a real server ----------------------------------------------------


@pytest.mark.integration
def test_concurrent_retries_through_gunicorn_create_one_batch(
    settings: Settings, cough_files: list[Path], tmp_path: Path
) -> None:
    """Two identical requests at once, on two gunicorn workers: one creates the batch,
    the other gets 409 (in progress) or the replay; never a second batch."""
    owner = f"race-{uuid.uuid4().hex[:8]}"
    stack = Stack(settings, tmp_path, TUSSIS_API_KEYS=f"{owner}:race-key")
    stack.start_api()
    try:
        files = [("files", (f.name, f.read_bytes())) for f in cough_files[:6]]
        headers = {"Authorization": "Bearer race-key", KEY: "concurrent"}
        barrier = threading.Barrier(4)
        answers: list[requests.Response] = []

        def send() -> None:
            barrier.wait()
            answers.append(
                requests.post(
                    f"{stack.url}/api/v1/batches", files=files, headers=headers, timeout=120
                )
            )

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        statuses = sorted(a.status_code for a in answers)
        assert len(statuses) == 4 and statuses.count(202) == 1, statuses
        assert set(statuses) <= {200, 202, 409}, statuses
        ids = {a.json()["id"] for a in answers if a.status_code in (200, 202)}
        assert len(ids) == 1
        for a in answers:
            if a.status_code == 409:
                assert a.headers["Retry-After"] == "1"
                assert a.json()["error"]["code"] == "idempotency_key_in_use"
        # Once the first has finished, a retry is a replay.
        again = requests.post(
            f"{stack.url}/api/v1/batches", files=files, headers=headers, timeout=120
        )
        assert again.status_code == 200 and again.json()["id"] in ids
        assert again.headers[REPLAYED] == "true"
        assert count(settings, "batches", owner) == 1
    finally:
        stack.stop()
