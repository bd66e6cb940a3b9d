"""Long recordings from the user's side, against a real stack (gunicorn + a celery
worker with two children, embedded defaults): ``Client.submit_recording`` uploads with
tuspy and resumes an interrupted upload without sending its bytes again, the typed
``Recording`` waits and lists its events, and ``tussis count`` writes the CSV and the
figure."""

from __future__ import annotations

import io
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.config import Settings
from tests.conftest import base_settings, migrate
from tests.long_fixtures import DEFAULT_MODEL, LongCase, long_env
from tests.stack import BIN, Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def long_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = base_settings(tmp_path_factory.mktemp("long-client"), model_bundle=DEFAULT_MODEL)
    migrate(settings.database_url)
    return settings


@pytest.fixture(scope="module")
def stack(long_settings: Settings, long_case: LongCase) -> Iterator[Stack]:
    s = Stack(long_settings, long_settings.data_dir, **long_env(long_settings, long_case))
    try:
        s.start_api()
        s.start_worker(concurrency=2)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def night_file(tmp_path_factory: pytest.TempPathFactory, long_case: LongCase) -> Path:
    path = tmp_path_factory.mktemp("nights") / "night.wav"
    path.write_bytes(long_case.wav)
    return path


def _uploads(settings: Settings) -> list[tuple[int, int, list]]:
    engine = sa.create_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text('SELECT length, "offset", parts FROM uploads')).all()
    finally:
        engine.dispose()
    import json

    return [(r[0], r[1], json.loads(r[2]) if isinstance(r[2], str) else r[2]) for r in rows]


def test_an_interrupted_upload_resumes_without_sending_bytes_again(
    stack: Stack,
    night_file: Path,
    long_case: LongCase,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tusclient.uploader import Uploader

    from tussis import Client

    client = Client(stack.url)
    state = tmp_path / "uploads.json"
    real = Uploader.upload_chunk
    sent = {"n": 0}

    def dies_after_two(self: Uploader) -> None:
        if sent["n"] == 2:
            raise KeyboardInterrupt  # the process is stopped between two requests
        sent["n"] += 1
        real(self)

    monkeypatch.setattr(Uploader, "upload_chunk", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        client.submit_recording(night_file, state_path=state, chunk_bytes=1 << 20, progress=False)
    [(length, offset, parts)] = _uploads(stack.settings)
    assert (length, offset) == (night_file.stat().st_size, 2 << 20)
    monkeypatch.setattr(Uploader, "upload_chunk", real)
    recording = client.submit_recording(
        night_file, state_path=state, chunk_bytes=1 << 20, progress=False, label="resumed"
    )
    # The same upload, finished: its parts follow each other, no byte sent twice.
    [(length, offset, parts)] = _uploads(stack.settings)
    assert offset == length and sum(size for _, size in parts) == length
    assert [int(key.rsplit(".", 1)[1]) for key, _ in parts] == [
        sum(size for _, size in parts[:i]) for i in range(len(parts))
    ]
    recording.wait(timeout=300)
    assert recording.status == "succeeded", recording.error
    assert recording.result is not None
    assert recording.result.cough_count == len(long_case.expected)
    events = list(recording.events(page_size=2))
    assert [(e.start_s, e.end_s, e.score) for e in events] == long_case.expected
    assert recording.timeline_png().startswith(b"\x89PNG")
    with wave.open(io.BytesIO(recording.clip(events[0].start_s, events[0].end_s))) as w:
        assert w.getnchannels() == 1 and w.getframerate() == 16000
    client.delete_recording(recording.id)


def test_tussis_count_writes_the_events_and_the_figure(
    stack: Stack, night_file: Path, long_case: LongCase, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run = subprocess.run(
        [str(BIN / "tussis"), "count", str(night_file), "--server", stack.url, "--out", str(out),
         "--no-progress", "--recorded-at", "2026-12-05T22:00:00+01:00"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"{len(long_case.expected)} coughs" in run.stdout
    lines = (out / "night.events.csv").read_text().splitlines()
    assert lines[0] == "start_s,end_s,score,start_time"
    assert len(lines) == len(long_case.expected) + 1
    assert lines[1].endswith("Z") and lines[1].split(",")[3].startswith("2026-12-05T21:00")
    assert (out / "night.timeline.png").read_bytes().startswith(b"\x89PNG")
