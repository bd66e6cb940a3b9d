"""Batches: intake of files and archives (untrusted input), and a real batch of
200+ recordings through gunicorn + Celery + PostgreSQL + Redis with a signed callback."""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import redis
import requests
from flask.testing import FlaskClient
from standardwebhooks import Webhook

from api import create_app
from shared.config import PROJECT_ROOT, Settings, normalise_database_url
from tests.api.conftest import assert_error
from tests.audio_samples import noise, wav
from tests.conftest import base_settings, configure
from tests.stack import Stack, wait_until


@pytest.fixture
def client(settings: Settings, request: pytest.FixtureRequest) -> FlaskClient:
    owner = f"batch-{abs(hash(request.node.nodeid)) % 10**8}"
    app = create_app(configure(settings, api_keys={"k-" + owner: owner}))
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer k-{owner}"
    return c


def post_files(client: FlaskClient, files: list[tuple[str, bytes]], **fields: str):
    data: dict = {"files": [(io.BytesIO(b), name) for name, b in files], **fields}
    return client.post("/api/v1/batches", data=data, content_type="multipart/form-data")


def post_zip(client: FlaskClient, archive: bytes, url: str = "/api/v1/batches", **fields: str):
    data = {"archive": (io.BytesIO(archive), "batch.zip"), **fields}
    return client.post(url, data=data, content_type="multipart/form-data")


def make_zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buf.getvalue()


def batch_queue_length(settings: Settings) -> int | None:
    if settings.broker_url.startswith("redis"):
        return int(redis.Redis.from_url(settings.broker_url).llen(settings.batch_queue_name))
    return None


def test_files_batch_accepts_good_files_and_reports_each_bad_one(
    client: FlaskClient, settings: Settings, cough_files: list[Path]
) -> None:
    good = [(f"site-a/{f.name}", f.read_bytes()) for f in cough_files[:3]]
    bad = [("notes.txt", b"hello"), ("quiet.wav", wav(noise(1.0, level=0.0)))]
    response = post_files(client, good + bad)
    assert response.status_code == 202, response.get_data(as_text=True)
    body = response.get_json()
    assert response.headers["Location"] == f"/api/v1/batches/{body['id']}"
    assert body["accepted"] == 3 and body["duplicates"] == 0
    assert {(r["path"], r["error"]["code"]) for r in body["rejected"]} == {
        ("notes.txt", "not_audio"),
        ("quiet.wav", "silent_audio"),
    }
    assert body["status"] == "running" and body["total"] == 3
    assert body["counts"] == {"queued": 3, "running": 0, "succeeded": 0, "failed": 0}
    if (length := batch_queue_length(settings)) is not None:
        assert length >= 1  # one chunk on the batch queue, none on the single-job queue

    items = client.get(f"/api/v1/batches/{body['id']}/items?limit=2").get_json()
    assert [i["path"] for i in items["items"]] == [good[0][0], good[1][0]]
    rest = client.get(f"/api/v1/batches/{body['id']}/items?cursor={items['next_cursor']}")
    assert [i["path"] for i in rest.get_json()["items"]] == [good[2][0]]
    assert items["items"][0]["batch_id"] == body["id"]

    rows = list(csv.DictReader(io.StringIO(client.get(body["links"]["results"]).get_data(True))))
    assert [r["path"] for r in rows] == [p for p, _ in good]
    assert {r["status"] for r in rows} == {"queued"}
    assert rows[0]["sha256"] == hashlib.sha256(good[0][1]).hexdigest()


def test_zip_keeps_folders_and_labels_and_rejects_unsafe_members(
    client: FlaskClient, cough_files: list[Path]
) -> None:
    a, b = cough_files[0].read_bytes(), cough_files[1].read_bytes()
    bomb = b"\0" * (4 * 1024 * 1024)  # compresses about 1000:1
    archive = make_zip(
        {
            "clinic/p1/cough.mp3": a,
            "clinic/p2/cough.mp3": b,
            "labels.csv": b"path,label\nclinic/p1/cough.mp3,sick\nclinic/p2/cough.mp3,not sick\n",
            "../../etc/evil.wav": a,
            "/abs/evil.wav": a,
            "inner.zip": make_zip({"x.wav": a}),
            "disguised.wav": make_zip({"x.wav": a}),
            "README.txt": b"read me",
            "bomb.wav": bomb,
            "__MACOSX/._cough.mp3": b"junk",
        }
    )
    response = post_zip(client, archive)
    assert response.status_code == 202, response.get_data(as_text=True)
    body = response.get_json()
    assert body["accepted"] == 2
    codes = {r["path"]: r["error"]["code"] for r in body["rejected"]}
    assert codes == {
        "../../etc/evil.wav": "unsafe_path",
        "/abs/evil.wav": "unsafe_path",
        "inner.zip": "nested_archive",
        "disguised.wav": "nested_archive",
        "README.txt": "not_audio",
        "bomb.wav": "compression_ratio_too_high",
    }
    items = client.get(f"/api/v1/batches/{body['id']}/items").get_json()["items"]
    assert [(i["path"], i["label"]) for i in items] == [
        ("clinic/p1/cough.mp3", "sick"),
        ("clinic/p2/cough.mp3", "not sick"),
    ]


def test_whole_archive_limits_have_their_own_codes(
    settings: Settings, cough_files: list[Path]
) -> None:
    a = cough_files[0].read_bytes()
    tight = configure(settings, archive_max_members=3, archive_max_uncompressed_bytes=10**6)
    client = create_app(tight).test_client()
    assert_error(
        post_zip(client, make_zip({f"{i}.mp3": a for i in range(4)})),
        422,
        "archive_too_many_members",
    )
    assert_error(
        post_zip(client, make_zip({"big.wav": b"\0" * (2 * 10**6)})), 422, "archive_too_large"
    )
    assert_error(post_zip(client, b"PK\x03\x04 not really a zip"), 422, "invalid_archive")
    assert_error(post_files(client, []), 400, "missing_files")
    assert_error(
        post_files(client, [("a.mp3", a)], callback_url="ftp://example.org/x"),
        400,
        "invalid_callback_url",
    )
    assert_error(client.get("/api/v1/batches/nope"), 404, "batch_not_found")


def test_open_batch_takes_parts_skips_duplicates_and_closes(
    client: FlaskClient, cough_files: list[Path]
) -> None:
    first = [(f.name, f.read_bytes()) for f in cough_files[:2]]
    created = post_files(client, first, open="true").get_json()
    assert created["status"] == "open"
    url = f"/api/v1/batches/{created['id']}"
    more = post_files_to(client, f"{url}/items", [*first, (cough_files[2].name, b"")])
    body = more.get_json()
    assert more.status_code == 202
    assert body["accepted"] == 0 and body["duplicates"] == 2
    assert body["rejected"][0]["error"]["code"] == "empty_audio"
    third = post_files_to(
        client, f"{url}/items", [(cough_files[3].name, cough_files[3].read_bytes())]
    )
    assert third.get_json()["accepted"] == 1
    closed = client.post(f"{url}/close").get_json()
    assert closed["status"] == "running" and closed["total"] == 3
    assert_error(post_files_to(client, f"{url}/items", first), 409, "batch_closed")
    listing = client.get("/api/v1/batches").get_json()["batches"]
    assert created["id"] in [b["id"] for b in listing]


def post_files_to(client: FlaskClient, url: str, files: list[tuple[str, bytes]]):
    data = {"files": [(io.BytesIO(b), name) for name, b in files]}
    return client.post(url, data=data, content_type="multipart/form-data")


# --- the whole system --------------------------------------------------------------------


class CallbackReceiver:
    """A loopback HTTP server that records POSTs; fails the first one to test retries."""

    def __init__(self) -> None:
        self.received: list[tuple[dict, bytes]] = []
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.calls += 1
                if outer.calls == 1:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.integration
def test_a_batch_of_210_real_recordings_through_the_whole_system(
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
    tiny_bundle: Path,
    cough_files: list[Path],
    cough_file: Path,
) -> None:
    settings = base_settings(
        tmp_path,
        database_url=normalise_database_url(postgres_url),
        broker_url=redis_url,
        model_bundle=tiny_bundle,
        callback_secret="s3cret",
        callback_allowed_networks="127.0.0.1/32",
    )
    receiver = CallbackReceiver()
    # The receiver is on loopback, which callbacks may reach only when allowed.
    stack = Stack(
        settings,
        tmp_path,
        TUSSIS_CALLBACK_SECRET="s3cret",
        TUSSIS_CALLBACK_ALLOWED_NETWORKS="127.0.0.1/32",
    )
    files = cough_files[100:310]
    archive = make_zip({f"batch/{i // 50}/{f.name}": f.read_bytes() for i, f in enumerate(files)})
    try:
        stack.start_api()
        stack.start_worker()
        response = requests.post(
            f"{stack.url}/api/v1/batches",
            files={"archive": ("study.zip", archive)},
            data={"callback_url": receiver.url},
            timeout=300,
        )
        assert response.status_code == 202, response.text
        batch = response.json()
        accepted = batch["accepted"]
        assert accepted + len(batch["rejected"]) == len(files) and accepted >= 200

        # A single job submitted now must not wait for the whole batch.
        single = stack.submit(cough_file.read_bytes(), cough_file.name).json()["id"]
        stack.wait_done(single, timeout=300)
        during = requests.get(f"{stack.url}{batch['links']['self']}", timeout=10).json()
        assert during["status"] == "running", "the single job waited for the whole batch"
        assert during["counts"]["queued"] > 0

        def completed() -> dict | None:
            b = requests.get(f"{stack.url}{batch['links']['self']}", timeout=10).json()
            return b if b["status"] == "completed" else None

        final = wait_until(completed, 900, "the batch to complete", 1.0)
        assert final["progress"] == 1.0 and final["total"] == accepted
        assert final["counts"]["succeeded"] + final["counts"]["failed"] == accepted
        assert final["counts"]["succeeded"] >= 0.9 * accepted
        assert final["eta_s"] is None and final["finished_at"]

        csv_text = requests.get(f"{stack.url}{batch['links']['results']}", timeout=60).text
        rows = list(csv.DictReader(io.StringIO(csv_text)))
        assert len(rows) == accepted
        assert all(r["status"] in ("succeeded", "failed") for r in rows)
        assert all(r["path"].startswith("batch/") for r in rows)
        ok = [r for r in rows if r["status"] == "succeeded"]
        assert all(r["diagnosis"] in ("sick", "not sick") and r["model_version"] for r in ok)
        assert all(r["cough_detected"] == "true" for r in ok)
        # Beside each cough score, the gate's threshold it was judged by; beside each
        # error code, its sentence (a refusal says why: too quiet, no cough, ...).
        manifest = PROJECT_ROOT / "models" / "cough-gate" / "manifest.json"
        gate = float(json.loads(manifest.read_text())["threshold"])
        assert all(float(r["cough_threshold"]) == pytest.approx(gate) for r in ok)
        assert all(float(r["cough_score"]) >= float(r["cough_threshold"]) for r in ok)
        failed = [r for r in rows if r["status"] == "failed"]
        assert all(r["error_code"] and r["error_message"].endswith(".") for r in failed)

        wait_until(lambda: receiver.received, 120, "the batch callback", 0.5)
        headers, body = receiver.received[0]
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers["X-Tussis-Signature"] == expected
        # Standard Webhooks: receivers verify with whsec_ + base64(secret).
        whsec = "whsec_" + base64.b64encode(b"s3cret").decode()
        assert Webhook(whsec).verify(body, headers)["batch_id"] == batch["id"]
        assert headers["webhook-id"] == f"batch_{batch['id']}"
        notice = json.loads(body)
        assert notice["batch_id"] == batch["id"] and notice["total"] == accepted
        assert notice["counts"] == final["counts"]
        assert receiver.calls == 2  # the first attempt got 503 and was retried
        time.sleep(1)
        cb = requests.get(f"{stack.url}{batch['links']['self']}", timeout=10).json()["callback"]
        assert cb["state"] == "delivered" and cb["attempts"] == 2

        item = requests.get(f"{stack.url}{batch['links']['items']}?limit=1", timeout=10).json()
        # Drawn on the first request for it (202), then served.
        url = f"{stack.url}{item['items'][0]['links']['spectrogram']}"
        assert requests.get(url, timeout=10).status_code == 202
        png = wait_until(
            lambda: (r := requests.get(url, timeout=10)).status_code == 200 and r,
            60,
            "the drawn spectrogram",
        )
        assert png.content[:4] == b"\x89PNG"
    finally:
        stack.stop()
        receiver.close()


@pytest.mark.integration
def test_a_chunk_cut_off_by_a_dying_worker_is_retried_one_recording_at_a_time(
    tmp_path: Path,
    postgres_url: str,
    redis_url: str,
    tiny_bundle: Path,
    cough_files: list[Path],
) -> None:
    """So that one recording that kills its worker cannot take its chunk-mates down."""
    import os
    import signal

    import sqlalchemy as sa

    settings = base_settings(
        tmp_path,
        database_url=normalise_database_url(postgres_url),
        broker_url=redis_url,
        model_bundle=tiny_bundle,
        drill_task_delay_s=4.0,
        # The broker's re-delivery is under test, not the sweeper: the dead child's
        # leases must outlive its replacement's start (an Inception child takes 10-25 s).
        job_lease_s=300.0,
    )
    stack = Stack(settings, tmp_path)
    try:
        stack.start_api()
        stack.start_worker()
        files = [("files", (f.name, f.read_bytes())) for f in cough_files[:3]]
        batch = requests.post(f"{stack.url}/api/v1/batches", files=files, timeout=60).json()
        engine = sa.create_engine(settings.database_url)

        def running_worker() -> str | None:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text("SELECT worker FROM jobs WHERE batch_id = :b AND status = 'running'"),
                    {"b": batch["id"]},
                ).all()
            return rows[0].worker if len(rows) == 3 else None  # the whole chunk is claimed

        worker = wait_until(running_worker, 120, "the chunk to be claimed", 0.05)
        os.kill(int(worker.rsplit(":", 2)[1]), signal.SIGKILL)

        def completed() -> dict | None:
            b = requests.get(f"{stack.url}{batch['links']['self']}", timeout=10).json()
            return b if b["status"] == "completed" else None

        final = wait_until(completed, 300, "the batch to complete", 0.5)
        assert final["counts"]["succeeded"] == 3
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT attempts, worker FROM jobs WHERE batch_id = :b"),
                {"b": batch["id"]},
            ).all()
        engine.dispose()
        assert [r.attempts for r in rows] == [2, 2, 2]
        assert len({r.worker for r in rows}) == 1  # one new child...
        assert "re-published" not in Stack.tail(stack.worker_log, 400)  # ...without the sweeper
    finally:
        stack.stop()
