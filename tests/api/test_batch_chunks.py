"""A batch upload stores its recordings a chunk at a time: one storage call and one
transaction (one commit, the audio's and the rows' INSERT statements) per
``batch_chunk_size`` items, with the guarantees of one job at a time.

Every stored chunk is published while the upload goes on; a failure part-way (in the
storage call or in the rows' transaction) leaves no batch, no job and no audio behind;
and every job row has its audio. On SQLite and on PostgreSQL (the ``settings`` fixture)."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest
from flask.testing import FlaskClient

from api import create_app, intake
from shared import jobs
from shared.config import Settings
from tests.api.conftest import assert_error, blobs, count
from tests.audio_samples import noise, pcm16_wav
from tests.conftest import configure

CHUNK = 4
MEMBERS = 10  # two full chunks and a last one of two


@pytest.fixture
def owner(request: pytest.FixtureRequest) -> str:
    return f"chunks-{abs(hash(request.node.nodeid)) % 10**8}"


@pytest.fixture
def client(settings: Settings, owner: str) -> FlaskClient:
    app = create_app(configure(settings, api_keys={"k-" + owner: owner}, batch_chunk_size=CHUNK))
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer k-{owner}"
    return c


def archive(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(MEMBERS):
            zf.writestr(f"r/{i:02d}.wav", pcm16_wav(noise(0.6, seed=seed + i)))
        zf.writestr("r/bad.wav", b"not audio")
    return buf.getvalue()


def post_zip(client: FlaskClient, data: bytes, url: str = "/api/v1/batches") -> Any:
    return client.post(
        url,
        data={"archive": (io.BytesIO(data), "batch.zip")},
        content_type="multipart/form-data",
    )


def test_a_chunk_is_one_storage_call_and_one_transaction_published_as_it_goes(
    client: FlaskClient, settings: Settings, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[tuple[str, int]] = []
    real_store_many, real_publish = intake.store_many, intake.publish_chunks
    store = client.application.extensions["tussis.storage"]
    real_put_new = store.put_new

    def put_new(session: Any, items: dict[str, bytes]) -> None:
        events.append(("put_new", len(items)))
        real_put_new(session, items)

    def store_many(*args: Any, **kwargs: Any) -> list[str]:
        ids = real_store_many(*args, **kwargs)
        # Committed: another connection already sees every row and its audio.
        rows = count(settings, "SELECT count(*) FROM jobs WHERE owner = :o", o=owner)
        events.append(("committed", rows))
        return ids

    def publish_chunks(job_ids: list[str], model: intake.Model = None) -> None:
        events.append(("published", len(job_ids)))
        real_publish(job_ids, model)

    def one_at_a_time(*_: Any, **__: Any) -> None:
        raise AssertionError("a batch stores its items by the chunk")

    monkeypatch.setattr(store, "put_new", put_new)
    monkeypatch.setattr(intake, "store_many", store_many)
    monkeypatch.setattr(intake, "publish_chunks", publish_chunks)
    monkeypatch.setattr(intake, "store", one_at_a_time)

    response = post_zip(client, archive())
    assert response.status_code == 202, response.get_data(as_text=True)
    body = response.get_json()
    assert body["accepted"] == MEMBERS and body["total"] == MEMBERS
    assert [r["error"]["code"] for r in body["rejected"]] == ["undecodable_audio"]
    # Full chunks go to the workers while the upload goes on; the rest at the end.
    assert events == [
        ("put_new", 4), ("committed", 4), ("published", 4),
        ("put_new", 4), ("committed", 8), ("published", 4),
        ("put_new", 2), ("committed", 10), ("published", 2),
    ]  # fmt: skip
    # What a worker reads: every row has its audio, in upload order.
    assert (
        count(
            settings,
            "SELECT count(*) FROM jobs j JOIN audio_blobs b ON b.key = j.audio_key"
            " WHERE j.owner = :o",
            o=owner,
        )
        == MEMBERS
    )
    items = client.get(f"/api/v1/batches/{body['id']}/items?page_size=100").get_json()["items"]
    assert [i["path"] for i in items] == [f"r/{i:02d}.wav" for i in range(MEMBERS)]


@pytest.mark.parametrize("where", ["rows", "audio"])
@pytest.mark.parametrize("keep_open", ["false", "true"])
def test_a_chunk_that_fails_leaves_no_batch_no_job_and_no_audio(
    client: FlaskClient,
    settings: Settings,
    owner: str,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    keep_open: str,
) -> None:
    """The second chunk fails after the first was stored and published: in its rows'
    transaction (its audio is stored by then) or in its storage call."""
    store = client.application.extensions["tussis.storage"]
    real_create, real_put_new = jobs.create, store.put_new
    calls = {"create": 0, "put_new": 0}

    def create(*args: Any, **kwargs: Any) -> Any:
        calls["create"] += 1
        if where == "rows" and calls["create"] == CHUNK + 2:
            raise RuntimeError("the database went away")
        return real_create(*args, **kwargs)

    def put_new(session: Any, items: dict[str, bytes]) -> None:
        calls["put_new"] += 1
        if where == "audio" and calls["put_new"] == 2:
            raise RuntimeError("the audio store went away")
        real_put_new(session, items)

    monkeypatch.setattr(jobs, "create", create)
    monkeypatch.setattr(store, "put_new", put_new)
    before = blobs(settings)
    response = client.post(
        "/api/v1/batches",
        data={"archive": (io.BytesIO(archive()), "batch.zip"), "open": keep_open},
        content_type="multipart/form-data",
    )
    assert_error(response, 500, "internal_error")
    assert calls["put_new"] == 2
    assert count(settings, "SELECT count(*) FROM batches WHERE owner = :o", o=owner) == 0
    assert count(settings, "SELECT count(*) FROM jobs WHERE owner = :o", o=owner) == 0
    assert blobs(settings) == before


def test_a_failed_part_leaves_an_open_batch_as_it_was(
    client: FlaskClient, settings: Settings, owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = post_zip_open(client)
    real_store_many = intake.store_many
    calls = {"n": 0}

    def store_then_fail(*args: Any, **kwargs: Any) -> list[str]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("the database went away")
        return real_store_many(*args, **kwargs)

    monkeypatch.setattr(intake, "store_many", store_then_fail)
    before = blobs(settings)
    part = post_zip(client, archive(seed=100), f"/api/v1/batches/{created}/items")
    assert_error(part, 500, "internal_error")
    assert blobs(settings) == before
    batch = client.get(f"/api/v1/batches/{created}").get_json()
    assert batch["status"] == "open" and batch["total"] == MEMBERS
    assert count(settings, "SELECT count(*) FROM jobs WHERE owner = :o", o=owner) == MEMBERS


def post_zip_open(client: FlaskClient) -> str:
    response = client.post(
        "/api/v1/batches",
        data={"archive": (io.BytesIO(archive()), "batch.zip"), "open": "true"},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    return str(response.get_json()["id"])
