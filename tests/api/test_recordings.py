"""``/api/v1/recordings`` and ``/api/v1/uploads`` in-process, on the embedded defaults
(SQLite, filesystem store) and on PostgreSQL + Redis + an S3 endpoint: limits checked
while the upload streams, nothing left behind by a refused or broken upload, resumable
uploads, idempotency, tenants and deletion."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from shared.config import Settings, normalise_database_url
from shared.storage import make_storage
from shared.tables import utcnow
from tests.api.conftest import assert_error, count
from tests.audio_samples import encode, noise, wav
from tests.conftest import base_settings, configure, migrate

OTHER = "bob"


@pytest.fixture(params=["embedded", "services"])
def rec_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The embedded defaults, and PostgreSQL + Redis with the recordings in S3."""
    if request.param == "embedded":
        s = base_settings(tmp_path)
        migrate(s.database_url)
    else:
        s = base_settings(
            tmp_path,
            database_url=normalise_database_url(request.getfixturevalue("postgres_url")),
            broker_url=request.getfixturevalue("redis_url"),
            recording_storage_url=request.getfixturevalue("s3_url"),
            s3_endpoint_url=request.getfixturevalue("s3_endpoint"),
        )
    # An owner of its own: the services' database is shared by the session's tests.
    owner = f"alice-{abs(hash(request.node.nodeid)) % 10**8}"
    return configure(s, api_keys={"key-a": owner, "key-b": OTHER})


@pytest.fixture
def app(rec_settings: Settings) -> Flask:
    return create_app(rec_settings)


def _client(app: Flask, key: str = "key-a") -> FlaskClient:
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return c


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return _client(app)


def stored_keys(settings: Settings) -> list[str]:
    store = make_storage(settings.recording_storage_url, "sqlite://", settings.s3_endpoint_url)
    from datetime import timedelta

    return sorted(store.keys_older_than(utcnow() + timedelta(days=1)))


def rows(settings: Settings, table: str) -> int:
    """This test's rows (its owner's) of ``table``."""
    owner = next(o for o in settings.key_owners.values() if o != OTHER)
    return count(settings, f"SELECT count(*) FROM {table} WHERE owner = :o", o=owner)


def assert_nothing_left(settings: Settings) -> None:
    assert stored_keys(settings) == []
    assert rows(settings, "recordings") == 0
    assert rows(settings, "jobs") == 0


class CountingStream(io.BytesIO):
    """A request body that remembers how much of it the server read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.consumed = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.consumed += len(chunk)
        return chunk


def multipart(audio: bytes, name: str = "night.wav", **fields: str) -> tuple[bytes, str]:
    boundary = "tussis-test-boundary"
    out = io.BytesIO()
    for key, value in fields.items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    out.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="audio"; filename="{name}"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
    )
    out.write(audio + f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


def post(
    client: FlaskClient, audio: bytes, headers: dict[str, str] | None = None, **fields: str
) -> Any:
    body, ctype = multipart(audio, **fields)
    stream = CountingStream(body)
    response = client.post(
        "/api/v1/recordings",
        input_stream=stream,
        content_length=len(body),
        content_type=ctype,
        headers=headers or {},
    )
    response.consumed = stream.consumed  # type: ignore[attr-defined]
    response.total = len(body)  # type: ignore[attr-defined]
    return response


def test_a_recording_is_stored_queued_and_readable(
    client: FlaskClient, rec_settings: Settings
) -> None:
    audio = wav(noise(12.0, level=0.1))
    r = post(client, audio, label="night 1", recorded_at="2026-12-05T22:40:00+01:00")
    assert r.status_code == 202, r.get_data(as_text=True)
    body = r.get_json()
    assert r.headers["Location"] == f"/api/v1/recordings/{body['id']}"
    assert body["status"] == "queued" and body["label"] == "night 1"
    assert body["recorded_at"] == "2026-12-05T21:40:00Z"
    assert body["audio"]["size_bytes"] == len(audio)
    assert body["audio"]["duration_s"] == pytest.approx(12.0, abs=0.01)
    assert body["progress"] == {"segments_done": 0, "segments_total": 0, "fraction": 0.0}
    assert body["result"] is None and body["error"] is None
    assert stored_keys(rec_settings) == [f"rec-{body['id']}.audio"]
    # Its decoding pass is a job row, but no job of the caller's.
    assert rows(rec_settings, "jobs") == 1
    assert client.get("/api/v1/jobs").get_json()["jobs"] == []
    got = client.get(body["links"]["self"])
    assert got.status_code == 200 and got.get_json()["id"] == body["id"]
    assert "Retry-After" in got.headers
    listed = client.get("/api/v1/recordings?limit=1").get_json()
    assert [x["id"] for x in listed["recordings"]] == [body["id"]]
    # Another tenant sees nothing of it.
    other = _client(client.application, "key-b")
    assert_error(other.get(body["links"]["self"]), 404, "recording_not_found")
    assert other.get("/api/v1/recordings").get_json()["recordings"] == []
    assert_error(client.get(f"{body['links']['self']}/events"), 409, "recording_not_counted")
    assert_error(
        client.get(f"{body['links']['self']}/audio?start_s=0&end_s=1"), 409, "recording_not_decoded"
    )


def test_too_long_is_refused_while_streaming_and_leaves_nothing(
    app: Flask, rec_settings: Settings
) -> None:
    limited = _client(create_app(configure(rec_settings, max_recording_s=5.0)))
    r = post(limited, wav(noise(60.0, level=0.1)))
    assert_error(r, 422, "audio_too_long")
    # Refused from the packets, long before the end of the body.
    assert r.consumed < r.total / 2
    assert_nothing_left(rec_settings)


def test_too_large_is_refused_while_streaming_and_leaves_nothing(rec_settings: Settings) -> None:
    limited = _client(create_app(configure(rec_settings, max_recording_bytes=300_000)))
    audio = wav(noise(30.0, level=0.1))  # 960 kB
    r = post(limited, audio)
    assert_error(r, 413, "upload_too_large")
    assert_nothing_left(rec_settings)
    # A body whose declared length is already too large is not read at all.
    body, ctype = multipart(audio)
    stream = CountingStream(body)
    r = limited.post(
        "/api/v1/recordings", input_stream=stream, content_length=len(body), content_type=ctype
    )
    assert_error(r, 413, "upload_too_large")
    assert stream.consumed == 0


@pytest.mark.parametrize("kind", ["mp3", "m4a-aac"])
def test_compressed_recordings_are_measured_too(client: FlaskClient, kind: str) -> None:
    r = post(client, encode(noise(8.0, level=0.1), 16000, kind), name=f"night.{kind[:3]}")
    assert r.status_code == 202, r.get_data(as_text=True)
    assert r.get_json()["audio"]["duration_s"] == pytest.approx(8.0, abs=0.1)


def test_bad_input_is_refused_with_a_code_and_leaves_nothing(
    client: FlaskClient, rec_settings: Settings
) -> None:
    assert_error(post(client, b"not audio at all" * 100), 422, "undecodable_audio")
    assert_error(post(client, wav(noise(3.0)), recorded_at="yesterday"), 400, "invalid_recorded_at")
    assert_error(
        post(client, wav(noise(3.0)), recorded_at="2026-12-05T22:00:00"), 400, "invalid_recorded_at"
    )
    assert_error(post(client, wav(noise(3.0)), label="a\x00b"), 400, "invalid_label")
    r = client.post("/api/v1/recordings", data={"other": "x"}, content_type="multipart/form-data")
    assert_error(r, 400, "missing_audio")
    # A body cut off in the middle of the audio.
    body, ctype = multipart(wav(noise(10.0)))
    r = client.post(
        "/api/v1/recordings",
        input_stream=io.BytesIO(body[: len(body) // 2]),
        content_length=len(body),
        content_type=ctype,
    )
    assert r.status_code == 400
    assert_nothing_left(rec_settings)


def test_idempotency_key_replays_the_recording(client: FlaskClient, rec_settings: Settings) -> None:
    audio = wav(noise(4.0, level=0.1))
    first = post(client, audio, headers={"Idempotency-Key": "night-1"})
    again = post(client, audio, headers={"Idempotency-Key": "night-1"})
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["id"] == first.get_json()["id"]
    other = post(client, wav(noise(4.0, level=0.1, seed=2)), headers={"Idempotency-Key": "night-1"})
    assert_error(other, 422, "idempotency_key_reused")
    assert rows(rec_settings, "recordings") == 1
    assert len(stored_keys(rec_settings)) == 1


def test_delete_removes_audio_and_rows_and_repeats(
    client: FlaskClient, rec_settings: Settings
) -> None:
    url = post(client, wav(noise(4.0, level=0.1))).get_json()["links"]["self"]
    assert_error(_client(client.application, "key-b").delete(url), 404, "recording_not_found")
    assert client.delete(url).status_code == 204
    assert client.delete(url).status_code == 204
    assert_error(client.get(url), 404, "recording_not_found")
    assert_nothing_left(rec_settings)


# --- tus -------------------------------------------------------------------------------

TUS = {"Tus-Resumable": "1.0.0"}


def _meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def test_a_resumable_upload_resumes_and_becomes_a_recording(
    client: FlaskClient, rec_settings: Settings
) -> None:
    audio = wav(noise(20.0, level=0.1))
    created = client.post(
        "/api/v1/uploads",
        headers={
            **TUS,
            "Upload-Length": str(len(audio)),
            "Upload-Metadata": _meta(filename="n.wav", label="night"),
        },
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    url = created.headers["Location"]
    half = len(audio) // 2
    patch = {**TUS, "Content-Type": "application/offset+octet-stream"}
    # The connection drops after 100 kB of the first half: what arrived is kept.
    cut = client.patch(
        url,
        input_stream=io.BytesIO(audio[:100_000]),
        content_length=half,
        headers={**patch, "Upload-Offset": "0"},
    )
    assert cut.status_code == 204
    head = client.head(url, headers=TUS)
    assert head.headers["Upload-Offset"] == "100000"
    assert_error(
        client.patch(url, data=audio[:10], headers={**patch, "Upload-Offset": "0"}),
        409,
        "upload_offset_mismatch",
    )
    done = client.patch(url, data=audio[100_000:], headers={**patch, "Upload-Offset": "100000"})
    assert done.status_code == 204, done.get_data(as_text=True)
    assert done.headers["Upload-Offset"] == str(len(audio))
    recording = client.get(done.headers["Tussis-Recording"]).get_json()
    assert recording["label"] == "night" and recording["audio"]["filename"] == "n.wav"
    assert recording["audio"]["size_bytes"] == len(audio)
    assert (
        client.head(url, headers=TUS).headers["Tussis-Recording"]
        == done.headers["Tussis-Recording"]
    )
    assert_error(client.delete(url, headers=TUS), 409, "upload_finished")
    # Deleting the recording takes the upload's parts with it.
    assert client.delete(done.headers["Tussis-Recording"]).status_code == 204
    assert_nothing_left(rec_settings)


def test_tus_discovery(client: FlaskClient, rec_settings: Settings) -> None:
    answer = client.options("/api/v1/uploads")
    assert answer.status_code < 300
    assert answer.headers["Tus-Version"] == "1.0.0"
    assert answer.headers["Tus-Extension"] == "creation,termination"
    assert answer.headers["Tus-Max-Size"] == str(rec_settings.max_recording_bytes)


def test_tus_refusals_and_termination(client: FlaskClient, rec_settings: Settings) -> None:
    assert_error(
        client.post("/api/v1/uploads", headers={"Upload-Length": "10"}),
        412,
        "tus_version_unsupported",
    )
    too_big = str(rec_settings.max_recording_bytes + 1)
    assert_error(
        client.post("/api/v1/uploads", headers={**TUS, "Upload-Length": too_big}),
        413,
        "upload_too_large",
    )
    url = client.post("/api/v1/uploads", headers={**TUS, "Upload-Length": "5000"}).headers[
        "Location"
    ]
    r = client.patch(
        url, data=b"x" * 10, headers={**TUS, "Upload-Offset": "0", "Content-Type": "text/plain"}
    )
    assert_error(r, 415, "unsupported_media_type")
    r = client.patch(
        url,
        data=b"x" * 6000,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert_error(r, 413, "upload_too_large")
    r = client.patch(
        url,
        data=b"x" * 1000,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert r.status_code == 204 and len(stored_keys(rec_settings)) == 1
    assert _client(client.application, "key-b").head(url, headers=TUS).status_code == 404
    assert client.delete(url, headers=TUS).status_code == 204
    assert client.head(url, headers=TUS).status_code == 404
    assert_nothing_left(rec_settings)
    assert rows(rec_settings, "uploads") == 0


def test_a_complete_upload_that_is_not_audio_is_refused_and_deleted(
    client: FlaskClient, rec_settings: Settings
) -> None:
    data = b"garbage!" * 1000
    url = client.post("/api/v1/uploads", headers={**TUS, "Upload-Length": str(len(data))}).headers[
        "Location"
    ]
    r = client.patch(
        url,
        data=data,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    )
    assert_error(r, 422, "undecodable_audio")
    assert_nothing_left(rec_settings)
    assert rows(rec_settings, "uploads") == 0
