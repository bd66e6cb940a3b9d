"""Access control, proved with the real app, the real `tussis keys` command and a
real gunicorn: keys in the database (hashes only), tenants walking every endpoint,
open mode only on loopback, rate limits per key, no key in a URL, API headers."""

from __future__ import annotations

import io
import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.auth import check_can_start, is_loopback_bind
from shared.config import Settings, SettingsError
from tests.api.conftest import assert_error
from tests.conftest import base_settings, configure, migrate
from tests.stack import BIN, free_port, settings_env

PROJECT = Path(__file__).resolve().parents[2]


def tussis_keys(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, as an operator runs it, against the test's database."""
    return subprocess.run(
        [str(BIN / "tussis"), "keys", *args],
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def create_key(settings: Settings, name: str, owner: str) -> tuple[str, str]:
    """(key id, key) from `tussis keys create`."""
    done = tussis_keys(settings, "create", name, "--owner", owner)
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    key_id = re.search(r"created key (\w+)", done.stderr)
    assert key.startswith("tus_") and key_id, (done.stdout, done.stderr)
    return key_id.group(1), key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(client: FlaskClient, data: bytes, headers: dict[str, str] | None = None) -> Any:
    return client.post(
        "/api/v1/jobs",
        data={"audio": (io.BytesIO(data), "cough.mp3")},
        content_type="multipart/form-data",
        headers=headers or {},
    )


@pytest.fixture
def embedded(tmp_path: Path) -> Settings:
    settings = base_settings(tmp_path)
    migrate(settings.database_url)
    return settings


# --- keys as data ---------------------------------------------------------------------


def test_keys_are_created_listed_used_and_revoked_and_only_their_hash_is_stored(
    embedded: Settings, cough_file: Path
) -> None:
    key_id, key = create_key(embedded, "clinic laptop", "clinic-a")
    client = create_app(embedded).test_client()

    # A key exists now: the service is no longer open, even on loopback.
    assert_error(client.get("/api/v1/jobs"), 401, "unauthorized")
    assert client.get("/api/v1/jobs", headers=bearer(key)).status_code == 200
    job_id = upload(client, cough_file.read_bytes(), bearer(key)).get_json()["id"]
    polled = client.get(f"/api/v1/jobs/{job_id}", headers=bearer(key))
    assert polled.status_code == 200
    # The key's last use is written once the answer is sent, when the server closes the
    # response (as gunicorn does after the last byte), never inside the poll's read.
    polled.close()
    assert_error(client.get("/api/v1/jobs", headers=bearer(key + "x")), 401, "invalid_api_key")

    listed = tussis_keys(embedded, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [r for r in json.loads(listed.stdout) if r["id"] == key_id]
    assert row["name"] == "clinic laptop" and row["owner"] == "clinic-a"
    assert row["last_used_at"] is not None and row["revoked"] is False
    assert key not in listed.stdout and key[4:] not in listed.stdout

    # Nowhere in the database is the key itself: every text column of every table.
    engine = sa.create_engine(embedded.database_url)
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            for values in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                assert not any(isinstance(v, str) and key[4:] in v for v in values), table
    engine.dispose()
    raw = Path(embedded.database_url.removeprefix("sqlite:///")).read_bytes()
    assert key[4:].encode() not in raw

    revoked = tussis_keys(embedded, "revoke", key_id)
    assert revoked.returncode == 0, revoked.stderr
    assert_error(client.get("/api/v1/jobs", headers=bearer(key)), 401, "invalid_api_key")
    again = tussis_keys(embedded, "revoke", key_id)
    assert again.returncode == 1 and "no active key" in again.stderr


def test_bootstrap_keys_from_the_environment_still_work(embedded: Settings) -> None:
    client = create_app(configure(embedded, api_keys={"boot-token": "ops"})).test_client()
    assert_error(client.get("/api/v1/jobs"), 401, "unauthorized")
    assert client.get("/api/v1/jobs", headers=bearer("boot-token")).status_code == 200


def test_a_key_in_the_url_is_refused(embedded: Settings) -> None:
    client = create_app(embedded).test_client()
    for name in ("api_key", "token", "access_token"):
        assert_error(client.get(f"/api/v1/jobs?{name}=tus_secret"), 400, "api_key_in_url")


# --- open mode only on loopback -------------------------------------------------------


def test_loopback_addresses() -> None:
    for bind in ("127.0.0.1:5000", "127.0.0.2:80", "[::1]:5000", "localhost:5000"):
        assert is_loopback_bind(bind), bind
    for bind in ("0.0.0.0:5000", ":5000", "[::]:5000", "10.0.0.5:5000", "unix:/run/t.sock"):
        assert not is_loopback_bind(bind), bind


def test_open_mode_serves_loopback_callers_only(embedded: Settings) -> None:
    client = create_app(embedded).test_client()
    assert client.get("/api/v1/jobs").status_code == 200  # from 127.0.0.1
    remote = client.get("/api/v1/jobs", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert_error(remote, 401, "unauthorized")


def test_an_open_service_refuses_to_start_on_a_public_address(embedded: Settings) -> None:
    public = configure(embedded, bind="0.0.0.0:5000")
    with pytest.raises(SettingsError, match="not loopback"):
        check_can_start(public)
    with pytest.raises(SettingsError):
        create_app(public)
    assert "OPEN MODE" in check_can_start(embedded)
    assert "required" in check_can_start(configure(public, api_keys={"t": "ops"}))
    create_key(embedded, "first", "ops")
    assert "required" in check_can_start(public)


def _gunicorn(settings: Settings, bind: str) -> subprocess.CompletedProcess[str]:
    """Start gunicorn as deployed (it reads ./gunicorn.conf.py); a started one is
    stopped by the timeout, so a refusal is the only way it returns quickly."""
    try:
        return subprocess.run(
            [str(BIN / "gunicorn"), "--bind", bind, "--workers", "1", "api:create_app()"],
            cwd=PROJECT,
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=8,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr.decode() if isinstance(exc.stderr, bytes) else str(exc.stderr or "")
        return subprocess.CompletedProcess(exc.cmd, -1, "", out)


def test_gunicorn_refuses_to_start_open_on_all_interfaces_and_starts_on_loopback(
    embedded: Settings,
) -> None:
    refused = _gunicorn(embedded, f"0.0.0.0:{free_port()}")
    assert refused.returncode == 1, refused.stderr
    assert "no API keys are configured" in refused.stderr
    assert "tussis keys create" in refused.stderr
    started = _gunicorn(embedded, f"127.0.0.1:{free_port()}")
    assert started.returncode == -1  # still serving when the timeout stopped it
    assert "OPEN MODE" in started.stderr and "Listening at" in started.stderr


# --- tenants --------------------------------------------------------------------------


def _resources(client: FlaskClient, headers: dict[str, str], audio: bytes) -> dict[str, str]:
    job = upload(client, audio, headers)
    assert job.status_code == 202, job.get_data(as_text=True)
    batch = client.post(
        "/api/v1/batches",
        data={"files": [(io.BytesIO(audio), "a.mp3")], "open": "true"},
        content_type="multipart/form-data",
        headers=headers,
    )
    assert batch.status_code == 202, batch.get_data(as_text=True)
    recording = client.post(
        "/api/v1/recordings",
        data={"audio": (io.BytesIO(audio), "night.mp3")},
        content_type="multipart/form-data",
        headers=headers,
    )
    assert recording.status_code == 202, recording.get_data(as_text=True)
    created = client.post(
        "/api/v1/uploads", headers={**headers, **TUS, "Upload-Length": str(len(audio))}
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    return {
        "job_id": job.get_json()["id"],
        "batch_id": batch.get_json()["id"],
        "recording_id": recording.get_json()["id"],
        "upload_id": created.headers["Location"].rsplit("/", 1)[-1],
    }


TUS = {"Tus-Resumable": "1.0.0"}
# What a request to these routes needs besides the id, so that only the id decides.
_EXTRA_QUERY = {"/api/v1/recordings/<recording_id>/audio": "?start_s=0&end_s=1"}
_TUS_HEADERS = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}


def test_two_tenants_walk_every_endpoint_and_see_only_their_own(
    settings: Settings, cough_file: Path
) -> None:
    app: Flask = create_app(
        configure(
            settings, api_keys={"alice-key": "alice", "bob-key": "bob"}, rate_limit="1000/second"
        )
    )
    client = app.test_client()
    alice, bob = bearer("alice-key"), bearer("bob-key")
    audio = cough_file.read_bytes()
    mine = _resources(client, alice, audio)
    missing = {name: str(uuid.uuid4()) for name in mine}

    walked = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or not rule.arguments:
            continue
        assert rule.arguments <= set(mine), f"{rule.rule}: add its resource to this walk"
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            kwargs: dict[str, Any] = {"method": method, "headers": bob}
            if rule.rule.startswith("/api/v1/uploads"):
                kwargs["headers"] = {**bob, **_TUS_HEADERS}
                kwargs["data"] = b"x"
            if method == "POST":
                kwargs.update(
                    data={"files": [(io.BytesIO(audio), "b.mp3")]},
                    content_type="multipart/form-data",
                )
            extra = _EXTRA_QUERY.get(rule.rule, "")
            theirs = client.open(
                rule.rule.replace("<", "{").replace(">", "}").format(**mine) + extra, **kwargs
            )
            if method == "POST":
                kwargs["data"] = {"files": [(io.BytesIO(audio), "b.mp3")]}
            elif "data" in kwargs:
                kwargs["data"] = b"x"
            absent = client.open(
                rule.rule.replace("<", "{").replace(">", "}").format(**missing) + extra, **kwargs
            )
            # Another tenant's id answers exactly like an id that does not exist.
            assert theirs.status_code == absent.status_code == 404, (rule.rule, method)
            body, other = theirs.get_json()["error"], absent.get_json()["error"]
            assert body["code"] == other["code"]
            for name in mine:
                other["message"] = other["message"].replace(missing[name], mine[name])
            assert body == other, (rule.rule, method)
            walked += 1
    assert walked >= 9  # job: get, delete, spectrogram; batch: get, delete, items x2, close, csv

    # Bob's lists are empty; nothing of Alice's was changed or deleted by his attempts.
    assert client.get("/api/v1/jobs", headers=bob).get_json()["jobs"] == []
    assert client.get("/api/v1/batches", headers=bob).get_json()["batches"] == []
    assert client.get(f"/api/v1/jobs/{mine['job_id']}", headers=alice).status_code == 200
    batch = client.get(f"/api/v1/batches/{mine['batch_id']}", headers=alice).get_json()
    assert batch["status"] == "open" and batch["total"] == 1
    own_items = client.get(f"/api/v1/batches/{mine['batch_id']}/items", headers=alice).get_json()
    item_id = own_items["items"][0]["id"]
    assert_error(client.get(f"/api/v1/jobs/{item_id}", headers=bob), 404, "job_not_found")
    assert client.get("/api/v1/models", headers=bob).status_code == 200
    assert_error(client.get("/api/v1/models"), 401, "unauthorized")


# --- rate limits ----------------------------------------------------------------------


def test_requests_are_limited_per_key_with_retry_after(settings: Settings) -> None:
    app = create_app(
        configure(settings, api_keys={"a": "alice", "b": "bob"}, rate_limit="5/minute")
    )
    client = app.test_client()
    for _ in range(5):
        assert client.get("/api/v1/jobs", headers=bearer("a")).status_code == 200
    limited = client.get("/api/v1/jobs", headers=bearer("a"))
    assert_error(limited, 429, "rate_limited")
    # The window is a minute; the counters keep whole seconds, so up to 61 s.
    assert 1 <= int(limited.headers["Retry-After"]) <= 61
    # Another key has its own budget.
    assert client.get("/api/v1/jobs", headers=bearer("b")).status_code == 200


def test_uploaded_bytes_are_limited_per_key(embedded: Settings, cough_file: Path) -> None:
    audio = cough_file.read_bytes()
    budget = int(len(audio) * 2.5)  # two uploads fit in a minute, the third does not
    app = create_app(
        configure(embedded, api_keys={"a": "alice", "b": "bob"}, upload_bytes_per_minute=budget)
    )
    client = app.test_client()
    for _ in range(2):
        assert upload(client, audio, bearer("a")).status_code == 202
    limited = upload(client, audio, bearer("a"))
    assert_error(limited, 429, "rate_limited")
    assert "bytes" in limited.get_json()["error"]["message"]
    assert int(limited.headers["Retry-After"]) >= 1
    assert client.get("/api/v1/jobs", headers=bearer("a")).status_code == 200  # reads still pass
    assert upload(client, audio, bearer("b")).status_code == 202


def test_a_chunked_body_is_charged_while_it_is_read(
    embedded: Settings, cough_files: list[Path]
) -> None:
    """No Content-Length to charge up front: the bytes are charged as they arrive, and a
    body that outgrows the budget is refused part-way, its files unstored."""
    from urllib3 import encode_multipart_formdata

    budget = 600 * 1024
    app = create_app(configure(embedded, api_keys={"c": "carol"}, upload_bytes_per_minute=budget))
    client = app.test_client()
    files, size = [], 0
    for f in cough_files:
        files.append(("files", (f.name, f.read_bytes())))
        size += f.stat().st_size
        if size > 2 * budget:
            break
    body, content_type = encode_multipart_formdata(files)
    chunked = {
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,  # what gunicorn says of a chunked body
        "CONTENT_TYPE": content_type,
        "HTTP_AUTHORIZATION": "Bearer c",
    }
    refused = client.open("/api/v1/batches", method="POST", environ_overrides=chunked)
    assert_error(refused, 429, "rate_limited")
    assert client.get("/api/v1/batches", headers=bearer("c")).get_json()["batches"] == []


# --- response headers -----------------------------------------------------------------


def test_api_answers_carry_security_headers_and_no_cors(embedded: Settings) -> None:
    client = create_app(embedded).test_client()
    for response in (
        client.get("/api/v1/jobs", headers={"Origin": "https://evil.example"}),
        client.get(f"/api/v1/jobs/{uuid.uuid4()}", headers={"Origin": "https://evil.example"}),
        client.options(
            "/api/v1/jobs",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        ),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert not any(h.lower().startswith("access-control-") for h, _ in response.headers.items())
    page = client.get("/")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_a_spectrogram_is_never_kept_by_a_cache(embedded: Settings, cough_file: Path) -> None:
    """The review: the picture was served `private, max-age=3600`, so a browser kept a
    picture of health data an hour after its DELETE. Every API answer is `no-store`."""
    from shared.db import session_scope
    from shared.storage import make_storage, spectrogram_key
    from shared.tables import Job, JobStatus

    client = create_app(embedded).test_client()
    job_id = upload(client, cough_file.read_bytes()).get_json()["id"]
    with session_scope(embedded.database_url) as session:  # as the worker leaves it
        job = session.get(Job, job_id)
        assert job is not None
        job.status, job.has_spectrogram = JobStatus.SUCCEEDED, True
        key = job.audio_key
    make_storage(embedded.storage_url, embedded.database_url).put(
        spectrogram_key(key), b"\x89PNG\r\n\x1a\n"
    )
    picture = client.get(f"/api/v1/jobs/{job_id}/spectrogram.png")
    assert picture.status_code == 200 and picture.mimetype == "image/png"
    assert picture.headers["Cache-Control"] == "no-store"
    assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 204
    assert_error(client.get(f"/api/v1/jobs/{job_id}/spectrogram.png"), 404, "job_not_found")


def test_allowed_hosts_guard_a_keyed_deployment(embedded: Settings) -> None:
    """TUSSIS_ALLOWED_HOSTS: a keyed deployment answers only the names it is reached by
    (and loopback names); probes and /metrics answer any Host, as orchestrators and
    Prometheus reach them by address."""
    client = create_app(
        configure(embedded, api_keys={"k": "ops"}, allowed_hosts=".example.org,api.tussis.test")
    ).test_client()
    key = bearer("k")
    for host in ("api.tussis.test", "API.Tussis.Test:443", "eu.example.org", "localhost:5000"):
        assert client.get("/api/v1/jobs", headers={**key, "Host": host}).status_code == 200, host
    for host in ("rebind.attacker.example", "example.org.attacker.example", "10.0.0.7:5000"):
        refused = client.get("/api/v1/jobs", headers={**key, "Host": host})
        assert_error(refused, 400, "host_not_allowed")
        assert_error(
            client.get("/api/v1/openapi.json", headers={"Host": host}), 400, "host_not_allowed"
        )
        assert client.get("/healthz", headers={"Host": host}).status_code == 200
        assert client.get("/metrics", headers={"Host": host}).status_code == 200
    # Unset, a keyed deployment answers any name: the key is what guards it.
    anyhost = create_app(configure(embedded, api_keys={"k": "ops"})).test_client()
    assert (
        anyhost.get("/api/v1/jobs", headers={**key, "Host": "whatever.example"}).status_code == 200
    )
