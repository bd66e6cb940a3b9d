"""Long recordings through the deployed system: gunicorn + a celery worker with two
children, on the embedded defaults (SQLite, SQLite broker, filesystem store) and on
PostgreSQL + Redis + an S3 endpoint. The recording is cut into segments that both
children take; the events the service reports are those of the segments joined at
their edges (coughs placed across edges are one event each)."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from shared.config import normalise_database_url
from tests.conftest import base_settings, migrate
from tests.long_fixtures import DEFAULT_MODEL, LongCase, long_env
from tests.stack import Stack, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["embedded", "services"])
def long_stack(
    request: pytest.FixtureRequest, tmp_path: Path, long_case: LongCase
) -> Iterator[Stack]:
    if request.param == "embedded":
        settings = base_settings(tmp_path, model_bundle=DEFAULT_MODEL)
        migrate(settings.database_url)
    else:
        # A database of its own: no API key in it, so the stack serves loopback openly
        # (the session's shared database holds other tests' keys).
        database_url = normalise_database_url(request.getfixturevalue("fresh_postgres_url"))
        migrate(database_url)
        settings = base_settings(
            tmp_path,
            model_bundle=DEFAULT_MODEL,
            database_url=database_url,
            broker_url=request.getfixturevalue("redis_url"),
            recording_storage_url=request.getfixturevalue("s3_url"),
            s3_endpoint_url=request.getfixturevalue("s3_endpoint"),
        )
    stack = Stack(settings, tmp_path, **long_env(settings, long_case))
    try:
        stack.start_api()
        stack.start_worker(concurrency=2)
        yield stack
    finally:
        stack.stop()


def submit(stack: Stack, data: bytes, **fields: str) -> dict[str, Any]:
    response = requests.post(
        f"{stack.url}/api/v1/recordings",
        files={"audio": ("night.wav", data, "audio/wav")},
        data=fields,
        timeout=120,
    )
    assert response.status_code == 202, response.text
    return response.json()


def wait_counted(stack: Stack, recording_id: str, timeout: float = 300) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        body = requests.get(f"{stack.url}/api/v1/recordings/{recording_id}", timeout=10).json()
        return body if body["status"] in ("succeeded", "failed") else None

    try:
        return wait_until(finished, timeout, f"recording {recording_id} to finish", 0.25)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{stack.tail(stack.worker_log)}") from exc


def all_events(stack: Stack, recording_id: str) -> list[dict[str, Any]]:
    """Every event, page by page through the Link headers."""
    url: str | None = f"{stack.url}/api/v1/recordings/{recording_id}/events?limit=3"
    found: list[dict[str, Any]] = []
    pages = 0
    while url:
        response = requests.get(url, timeout=10)
        assert response.status_code == 200, response.text
        found += response.json()["events"]
        pages += 1
        link = response.links.get("next", {}).get("url")
        url = f"{stack.url}{link}" if link else None
    assert pages == -(-len(found) // 3)
    return found


def test_a_recording_is_counted_across_segments_by_both_children(
    long_stack: Stack, long_case: LongCase
) -> None:
    body = submit(long_stack, long_case.wav, recorded_at="2026-12-05T23:58:30Z", label="night")
    done = wait_counted(long_stack, body["id"])
    assert done["status"] == "succeeded", done
    result = done["result"]
    assert done["progress"]["segments_total"] == 6 == done["progress"]["segments_done"]
    assert result["detector"]["name"] == "yamnet-cough-class"
    found = all_events(long_stack, body["id"])
    # Exactly the segments' events joined at their edges (coughs across edges: one each).
    assert found == [{"start_s": a, "end_s": b, "score": s} for a, b, s in long_case.expected]
    assert result["cough_count"] == len(long_case.expected)
    assert 1 <= result["episodes"] <= result["cough_count"]
    # Clock hours: the recording (2.6 min) starts 90 s before midnight.
    assert [h["start"][11:16] for h in result["hourly"]] == ["23:00", "00:00"]
    assert sum(h["count"] for h in result["hourly"]) == result["cough_count"]
    assert sum(b["count"] for b in result["ten_minutes"]) == result["cough_count"]
    # The CSV has the same events, with their clock times.
    csv_text = requests.get(f"{long_stack.url}{done['links']['events_csv']}", timeout=10).text
    lines = csv_text.strip().splitlines()
    assert lines[0] == "start_s,end_s,score,start_time" and len(lines) == len(found) + 1
    png = requests.get(f"{long_stack.url}{done['links']['timeline']}", timeout=30)
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    # Any event can be played back: a short WAV of its span.
    first = found[0]
    clip = requests.get(
        f"{long_stack.url}{done['links']['audio']}",
        params={"start_s": first["start_s"], "end_s": first["end_s"]},
        timeout=10,
    )
    assert clip.status_code == 200 and clip.headers["Content-Type"] == "audio/wav"
    with wave.open(io.BytesIO(clip.content)) as w:
        assert w.getframerate() == 16000
        assert w.getnframes() == pytest.approx((first["end_s"] - first["start_s"]) * 16000, abs=2)
    # The work was shared: the segments were claimed by both children.
    engine = sa.create_engine(long_stack.settings.database_url)
    try:
        with engine.connect() as conn:
            workers = (
                conn.execute(
                    sa.text(
                        "SELECT DISTINCT worker FROM jobs "
                        "WHERE recording_id = :r AND segment IS NOT NULL"
                    ),
                    {"r": body["id"]},
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    print(f"\n[long] segments taken by {len(workers)} worker children")
    # Deleting takes the audio, the PCM and the events.
    assert (
        requests.delete(f"{long_stack.url}{done['links']['self']}", timeout=10).status_code == 204
    )
