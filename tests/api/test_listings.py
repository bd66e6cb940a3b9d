"""Every listing (jobs, batches, a batch's items) pages the same way: an opaque,
URL-safe ``next_cursor``, a ``Link: <...>; rel="next"`` header while there is a next
page, and ``400 invalid_cursor`` (never a 500) for a cursor the API did not issue."""

from __future__ import annotations

import io
import re
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from api import create_app
from shared.config import Settings
from tests.api.conftest import assert_error
from tests.audio_samples import noise, wav
from tests.conftest import configure

LINK = re.compile(r'^<(/api/v1/[^>]+)>; rel="next"$')
MALFORMED = [
    "100",  # the items listing's old cursor
    "٣",
    "abc\x00def",
    "a+b/c==",
    "WyIyMDI2LTAxLTAyVDAzOjA0OjA1IiwgImFiYyJd",  # ["2026-01-02T03:04:05", "abc"]: no zone
    "%%%",
    "!!!!",
    "W10",
]


@pytest.fixture
def client(settings: Settings) -> FlaskClient:
    app = create_app(configure(settings, api_keys={"list-key": "lister"}))
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = "Bearer list-key"
    return c


def recording(seed: int) -> tuple[io.BytesIO, str]:
    return io.BytesIO(wav(noise(0.5, seed=seed))), f"r{seed}.wav"


def walk(client: FlaskClient, url: str, key: str) -> tuple[list[str], int]:
    """Follow the Link headers from ``url``; the ids seen and the pages read."""
    seen: list[str] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        response = client.get(next_url)
        assert response.status_code == 200, response.get_data(as_text=True)
        body = response.get_json()
        seen += [row["id"] for row in body[key]]
        pages += 1
        link = response.headers.get("Link")
        if body["next_cursor"] is None:
            assert link is None
            next_url = None
            continue
        assert re.fullmatch(r"[A-Za-z0-9_-]+", body["next_cursor"])
        match = LINK.match(link or "")
        assert match, link
        next_url = match.group(1)
        assert f"cursor={body['next_cursor']}" in next_url
    return seen, pages


def test_jobs_batches_and_items_page_alike(client: FlaskClient) -> None:
    jobs = [
        client.post("/api/v1/jobs", data={"audio": recording(i)}).get_json()["id"] for i in range(3)
    ]
    assert walk(client, "/api/v1/jobs?limit=2", "jobs") == (list(reversed(jobs)), 2)

    batch = client.post(
        "/api/v1/batches", data={"files": [recording(10 + i) for i in range(3)]}
    ).get_json()
    others = [
        client.post("/api/v1/batches", data={"files": [recording(20 + i)]}).get_json()["id"]
        for i in range(2)
    ]
    seen, pages = walk(client, "/api/v1/batches?limit=2", "batches")
    assert seen == [*reversed(others), batch["id"]] and pages == 2

    items, pages = walk(client, f"{batch['links']['items']}?limit=2", "items")
    assert len(items) == 3 and pages == 2


@pytest.mark.parametrize("cursor", MALFORMED)
def test_a_malformed_cursor_is_400_on_every_listing(client: FlaskClient, cursor: str) -> None:
    batch_id = client.post("/api/v1/batches", data={"files": [recording(1)]}).get_json()["id"]
    for url in ("/api/v1/jobs", "/api/v1/batches", f"/api/v1/batches/{batch_id}/items"):
        assert_error(client.get(f"{url}?cursor={quote(cursor)}"), 400, "invalid_cursor")


def test_a_cursor_of_one_listing_is_refused_by_another(client: FlaskClient) -> None:
    for i in range(2):
        client.post("/api/v1/jobs", data={"audio": recording(i)})
    cursor = client.get("/api/v1/jobs?limit=1").get_json()["next_cursor"]
    assert cursor
    assert_error(client.get(f"/api/v1/batches?cursor={cursor}"), 400, "invalid_cursor")


@pytest.mark.parametrize("query", ["limit=1.0", "limit=%205", "limit=-1", "limit=%D9%A3"])
def test_limits_are_whole_numbers_in_range(client: FlaskClient, query: str) -> None:
    for url in ("/api/v1/jobs", "/api/v1/batches"):
        assert_error(client.get(f"{url}?{query}"), 400, "invalid_limit")
