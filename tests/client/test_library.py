"""``from tussis import Client`` against a real stack (gunicorn + celery worker on
PostgreSQL + Redis, the tiny bundle, the cough gate on)."""

from __future__ import annotations

import csv
import io
import math
import struct
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

import tussis.connection
from shared.audio import AudioError, check_usable, decode
from shared.config import Settings, normalise_database_url
from tests.conftest import base_settings
from tests.stack import Stack
from tussis import Client, Evaluation, Job, RequestRefused, WaitTimeout

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str, tiny_bundle: Path
) -> Iterator[Stack]:
    settings: Settings = base_settings(
        tmp_path_factory.mktemp("library-stack"),
        database_url=normalise_database_url(postgres_url),
        broker_url=redis_url,
        model_bundle=tiny_bundle,
    )
    s = Stack(settings, settings.data_dir)
    s.start_api()
    s.start_worker()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cohort(cough_files: list[Path], cough_metadata: list[dict]) -> dict[str, list[Path]]:
    """Four usable recordings of each label, distinct in content."""
    sick = {m["filename"]: bool(m["covid19"]) for m in cough_metadata}
    chosen: dict[str, list[Path]] = {"sick": [], "not sick": []}
    seen: set[bytes] = set()
    for path in cough_files:
        label = "sick" if sick[path.name] else "not sick"
        data = path.read_bytes()
        if len(chosen[label]) == 4 or data in seen:
            continue
        try:
            check_usable(decode(data), 0.3, 120.0, -60.0)
        except AudioError:
            continue
        seen.add(data)
        chosen[label].append(path)
        if all(len(v) == 4 for v in chosen.values()):
            return chosen
    raise AssertionError(f"too few usable recordings: {chosen}")


def tone(seconds: float, hz: float = 440.0, rate: int = 16000) -> bytes:
    """A loud pure tone as a WAV file: usable audio, but no cough in it."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = int(seconds * rate)
        w.writeframes(
            b"".join(
                struct.pack("<h", int(16000 * math.sin(2 * math.pi * hz * i / rate)))
                for i in range(frames)
            )
        )
    return out.getvalue()


def test_submit_wait_and_a_typed_result(stack: Stack, cohort: dict[str, list[Path]]) -> None:
    client = Client(stack.url)
    assert client.health().ready

    job = client.submit(cohort["sick"][0])
    assert isinstance(job, Job) and job.status in {"queued", "running"}
    assert job.filename == cohort["sick"][0].name and job.result is None
    # A deadline already past: no poll can find the job done first (0.01 s raced the
    # worker, which can finish a clip within the first poll).
    with pytest.raises(WaitTimeout):
        job.wait(timeout=0)
    assert job.wait(timeout=240) is job
    assert job.status == "succeeded", job.error
    result = job.result
    assert result is not None and job.error is None
    assert result.diagnosis in {"sick", "not sick"} and 0.0 <= result.score <= 1.0
    assert result.cough_detected is True
    assert result.model_id and result.model_version
    # The same job fetched again, from bytes submitted under another name.
    assert client.job(job.id).result == result

    served = {(m.id, m.version) for m in client.models() if m.role == "diagnosis" and m.active}
    assert (result.model_id, result.model_version) in served


def test_job_wait_is_answered_by_a_long_poll_not_a_sleep(
    stack: Stack, cohort: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that finishes in a fraction of a second once took Job.wait() the whole
    Retry-After (2 s then): now the server holds the poll and answers at the result."""
    import tussis.resources

    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"Job.wait() slept {seconds} s instead of long-polling")

    client = Client(stack.url)
    answers: list[dict[str, str]] = []
    client._session("poll").hooks["response"].append(
        lambda r, *a, **k: answers.append(dict(r.headers))
    )
    job = client.submit(cohort["not sick"][0])
    monkeypatch.setattr(tussis.resources.time, "sleep", no_sleep)
    assert job.wait(timeout=240).done
    assert answers and all(a.get("Preference-Applied", "").startswith("wait=") for a in answers)


def test_refusals_and_failed_jobs_carry_the_server_code(stack: Stack) -> None:
    client = Client(stack.url)
    with pytest.raises(RequestRefused) as refused:
        client.submit(tone(0.1), filename="short.wav")
    assert (refused.value.status, refused.value.code) == (422, "audio_too_short")
    assert "0.3" in refused.value.api_message

    job = client.submit(tone(2.0), filename="tone.wav").wait(timeout=240)
    assert job.status == "failed" and job.result is None
    assert job.error is not None and job.error.code == "no_cough_detected"
    assert job.error.message and job.error.cough_detected is False


def test_submit_batch_with_labels_then_items_csv_and_evaluation(
    stack: Stack, cohort: dict[str, list[Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "recordings"
    labels: dict[str, str] = {}
    groups: dict[str, str] = {}
    for label, files in cohort.items():
        for i, f in enumerate(files):
            site = "site-a" if i % 2 else "site-b"
            (root / site).mkdir(parents=True, exist_ok=True)
            (root / site / f.name).symlink_to(f)
            labels[f"{site}/{f.name}"] = label
            groups[f"{site}/{f.name}"] = site
    monkeypatch.chdir(tmp_path)  # the resume file goes here while uploading

    client = Client(stack.url)
    batch = client.submit_batch([root], labels=labels, groups=groups, progress=False)
    assert batch.total == 8 and batch.rejected == []
    assert list(tmp_path.glob(".tussis-submit-*.json")) == []  # done: nothing to resume
    with pytest.raises(RequestRefused) as refused:
        batch.evaluation()  # not finished yet
    assert refused.value.code == "batch_not_finished"

    assert batch.wait(progress=False, timeout=300) is batch
    assert batch.done and batch.counts.done == 8

    monkeypatch.setattr(tussis.connection, "PAGE_LIMIT", 3)  # three pages of items
    items = list(batch.items())
    assert {i.path: (i.label, i.group) for i in items} == {
        p: (labels[p], groups[p]) for p in labels
    }
    assert all(i.status in {"succeeded", "failed"} and i.batch_id == batch.id for i in items)

    out = batch.to_csv(tmp_path / "results.csv")
    rows = list(csv.DictReader(out.open()))
    assert {r["path"]: r["label"] for r in rows} == labels

    evaluation = batch.evaluation()
    assert isinstance(evaluation, Evaluation)
    assert set(evaluation.groups) == {"site-a", "site-b"}
    scored = [i for i in items if i.result is not None]
    # Recordings the tiny bundle was trained on are left out of the headline, and
    # counted; the figures with every scored item follow (all_items).
    left_out = int(evaluation.training_items["left_out"])
    assert evaluation.training_items["split_known"] is True
    assert evaluation.overall.n == len(scored) - left_out
    assert evaluation.overall.n + left_out + evaluation.rejected_by_gate + evaluation.failed == 8
    every = evaluation.all_items or evaluation.raw
    assert every["overall"]["n"] == len(scored)
    assert every["overall"]["positives"] == sum(i.label == "sick" for i in scored)
    assert set(evaluation.baselines["overall"]) >= {"duration", "active_share", "loudness"}
    assert evaluation.model.labels == ["not sick", "sick"]
    assert evaluation.model.version == scored[0].result.model_version  # type: ignore[union-attr]


def test_labels_are_checked_before_anything_is_sent(stack: Stack, tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(tone(1.0))
    client = Client(stack.url)
    with pytest.raises(tussis.UsageProblem, match="no submitted file"):
        client.submit_batch([tmp_path / "a.wav"], labels={"b.wav": "sick"}, progress=False)
