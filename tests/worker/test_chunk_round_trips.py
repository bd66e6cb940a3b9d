"""A chunk's database work in a few statements: one claim, one audio read and one
transaction for all the results, each result still guarded by its own claim."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from sqlalchemy import delete, event

from ml.spectrogram import SpectrogramParams
from shared import jobs
from shared.config import Settings, normalise_database_url
from shared.db import get_engine, session_scope
from shared.tables import Job
from tests.audio_samples import noise, wav
from tests.conftest import base_settings
from worker import pipeline
from worker.runtime import Models, Runtime

CHUNK = 16


class FakeModel:
    """Stands in for the diagnosis model (this is about the database, not the model);
    ``hook`` runs before it answers, ``diagnosis`` names each clip's answer."""

    sample_rate = 16000
    id, version = "fake", "1"

    def __init__(self, hook: Callable[[], None], diagnosis: Callable[[int], str]) -> None:
        self.hook, self.diagnosis = hook, diagnosis
        self.manifest = SimpleNamespace(threshold=0.5, spectrogram=SpectrogramParams())

    def predict(self, clips: list[np.ndarray]) -> list[SimpleNamespace]:
        self.hook()
        return [SimpleNamespace(diagnosis=self.diagnosis(i), score=0.1) for i in range(len(clips))]


def make_chunk(settings: Settings, rt: Runtime, n: int = CHUNK) -> list[str]:
    ids = [jobs.new_job_id() for _ in range(n)]
    for i, job_id in enumerate(ids):
        rt.storage.put(job_id, wav(noise(0.5, seed=i)))
    with session_scope(settings.database_url) as session:
        for job_id in ids:
            jobs.create(
                session,
                job_id=job_id,
                owner="t",
                filename=None,
                content_type=None,
                size_bytes=1,
                sha256="0" * 64,
                duration_s=0.5,
            )
    return ids


@contextmanager
def round_trips(database_url: str) -> Iterator[list[str]]:
    """Statements and commits this thread sends (not the heartbeat thread's)."""
    seen: list[str] = []
    me = threading.get_ident()

    def statement(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
        if threading.get_ident() == me:
            seen.append(sql.split(None, 1)[0].upper())

    def commit(_conn: Any) -> None:
        if threading.get_ident() == me:
            seen.append("COMMIT")

    engine = get_engine(database_url)
    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)


def states(settings: Settings, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    with session_scope(settings.database_url) as session:
        found = session.query(Job).filter(Job.id.in_(ids))
        return {job.id: (job.status, job.error_code) for job in found}


def runtime(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    hook: Callable[[], None] = lambda: None,
    diagnosis: Callable[[int], str] = lambda _i: "not sick",
) -> Runtime:
    rt = Runtime(settings)
    model = FakeModel(hook, diagnosis)
    monkeypatch.setattr(rt, "load_models", lambda: Models(model, None))  # type: ignore[arg-type]
    return rt


def test_a_chunk_claims_reads_and_records_in_three_transactions(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids: list[str] = []

    def delete_one() -> None:  # its owner deletes it while the model runs
        with session_scope(settings.database_url) as session:
            session.execute(delete(Job).where(Job.id == ids[1]))

    rt = runtime(settings, monkeypatch, hook=delete_one)
    ids.extend(make_chunk(settings, rt))
    rt.storage.delete(ids[0])  # its audio is gone: audio_missing, as before

    with round_trips(settings.database_url) as seen:
        pipeline.Pipeline(rt, lambda _batch_id: None).run(ids)

    writes = [s for s in seen if s == "UPDATE"]
    # Claim: SELECT + one UPDATE. Audio: one SELECT. Results: CHUNK guarded UPDATEs
    # (the deleted job's finds no row) in one transaction. The DELETE is the test's.
    assert seen == (
        ["SELECT", "UPDATE", "COMMIT", "SELECT", "COMMIT", "DELETE", "COMMIT"]
        + ["UPDATE"] * CHUNK
        + ["COMMIT"]
    ), seen
    assert len(writes) == 1 + CHUNK
    got = states(settings, ids)
    assert ids[1] not in got  # the lost claim was found, and nothing brought the row back
    assert got[ids[0]] == ("failed", "audio_missing")
    assert {got[i] for i in ids[2:]} == {("succeeded", None)}
    assert rt.heartbeat.held() == []


def test_a_result_the_database_refuses_does_not_sink_the_chunk(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = base_settings(tmp_path, database_url=normalise_database_url(postgres_url))
    # PostgreSQL only: SQLite does not enforce column lengths, so it refuses nothing here.
    # The third clip's answer is longer than its column: PostgreSQL refuses that UPDATE,
    # which rolls back the chunk's transaction; the others are then written one by one.
    rt = runtime(settings, monkeypatch, diagnosis=lambda i: "x" * 40 if i == 2 else "not sick")
    ids = make_chunk(settings, rt, 4)
    pipeline.Pipeline(rt, lambda _batch_id: None).run(ids)
    got = states(settings, ids)
    assert got[ids[2]] == ("failed", "internal_error")
    assert {got[i] for i in ids if i != ids[2]} == {("succeeded", None)}
