"""Several models side by side, on the real stack (gunicorn, ``celery worker`` processes,
PostgreSQL, Redis): the model chosen per job and per batch, a queue per model that only
its workers consume, work left for a retired model failing with its code, and rescoring
a finished batch's stored audio with another model.

The second model is a copy of ``models/default`` under another name: a YAMNet bundle
loads in about a second, where an Inception V3 one would cost every test worker seconds
and 0.9 GiB; the routing is the same for any bundle."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from datetime import timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.config import PROJECT_ROOT, Settings, normalise_database_url
from shared.retention import purge
from shared.storage import make_storage
from shared.tables import utcnow
from tests.api.test_web import _expect, _submitted_job, browser, playwright  # noqa: F401
from tests.conftest import base_settings, migrate, require
from tests.stack import BIN, Stack, wait_until
from tussis.client import Client
from tussis.errors import RequestRefused

pytestmark = pytest.mark.integration

DEFAULT = PROJECT_ROOT / "models" / "default"
DEFAULT_NAME = json.loads((DEFAULT / "manifest.json").read_text())["name"]
OTHER_NAME, OTHER_VERSION = "tussis-second-opinion", "0.1.0"


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second diagnosis bundle: models/default under another name and version."""
    folder = tmp_path_factory.mktemp("second-model") / "second"
    shutil.copytree(DEFAULT, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(name=OTHER_NAME, version=OTHER_VERSION)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def settings(
    tmp_path: Path, fresh_postgres_url: str, redis_url: str, other_bundle: Path
) -> Settings:
    # A database of its own: no API key in it, so the stack serves loopback openly (the
    # session's shared database holds other tests' keys), and no other test's models.
    database_url = normalise_database_url(fresh_postgres_url)
    migrate(database_url)
    return base_settings(
        tmp_path,
        database_url=database_url,
        broker_url=redis_url,
        model_bundles=(DEFAULT, other_bundle),
        model_grace_s=6.0,
        sweep_interval_s=1.0,
    )


@pytest.fixture
def stack(settings: Settings, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(settings, tmp_path)
    yield s
    s.stop()


def api(stack: Stack, method: str, path: str, **kwargs: Any) -> requests.Response:
    return requests.request(method, f"{stack.url}/api/v1{path}", timeout=60, **kwargs)


def submit(stack: Stack, audio: bytes, form: dict[str, str] | None = None) -> requests.Response:
    return api(stack, "POST", "/jobs", files={"audio": ("cough.mp3", audio)}, data=form or {})


def batch_zip(files: list[Path]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for n, f in enumerate(files):
            archive.writestr(f"site{n % 2}/p{n}/{f.name}", f.read_bytes())
        rows = ["path,label,group"] + [
            f"site{n % 2}/p{n}/{f.name},{'sick' if n % 2 else 'not sick'},site{n % 2}"
            for n, f in enumerate(files)
        ]
        archive.writestr("labels.csv", "\n".join(rows) + "\n")
    return buffer.getvalue()


def submit_batch(stack: Stack, data: bytes, model: str | None = None) -> dict[str, Any]:
    form = {"model": model} if model else {}
    response = api(stack, "POST", "/batches", files={"archive": ("b.zip", data)}, data=form)
    assert response.status_code == 202, response.text
    return response.json()


def wait_batch(stack: Stack, batch_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = api(stack, "GET", f"/batches/{batch_id}").json()
        return body if body["status"] == "completed" else None

    return wait_until(done, 180, f"batch {batch_id} to complete", 0.3)


def items(stack: Stack, batch_id: str) -> list[dict[str, Any]]:
    return api(stack, "GET", f"/batches/{batch_id}/items").json()["items"]


def test_each_model_scores_the_jobs_and_batches_that_name_it_and_rescoring_copies_the_audio(
    stack: Stack, settings: Settings, cough_files: list[Path]
) -> None:
    stack.start_api()
    stack.start_worker()
    models = api(stack, "GET", "/models").json()["models"]
    diagnosis = {(m["id"], m["version"]): m for m in models if m["role"] == "diagnosis"}
    assert {(OTHER_NAME, OTHER_VERSION)} <= set(diagnosis)
    assert all(m["active"] for m in diagnosis.values())
    # The worker's first bundle is the default; exactly one model says so.
    assert [k[0] for k, m in diagnosis.items() if m["default"]] == [DEFAULT_NAME]

    audio = cough_files[0].read_bytes()
    plain = submit(stack, audio)
    named = submit(stack, audio, {"model": OTHER_NAME})
    pinned = submit(stack, audio, {"model": f"{OTHER_NAME}@{OTHER_VERSION}"})
    assert plain.status_code == named.status_code == pinned.status_code == 202
    assert plain.json()["model"]["id"] == DEFAULT_NAME
    assert named.json()["model"] == {"id": OTHER_NAME, "version": OTHER_VERSION}
    done = {r.json()["id"]: stack.wait_done(r.json()["id"]) for r in (plain, named, pinned)}
    scored = [(j["status"], j["result"]["model_id"]) for j in done.values()]
    assert scored == [
        ("succeeded", DEFAULT_NAME),
        ("succeeded", OTHER_NAME),
        ("succeeded", OTHER_NAME),
    ]
    # The same head under two names: the same score, from two different models.
    scores = {round(j["result"]["score"], 6) for j in done.values()}
    assert len(scores) == 1

    refused = submit(stack, audio, {"model": "no-such-model"})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "model_not_served" and "no-such-model" in error["message"]
    assert f"{OTHER_NAME}@{OTHER_VERSION}" in error["served"]
    wrong_version = submit(stack, audio, {"model": f"{OTHER_NAME}@9.9.9"})
    assert wrong_version.json()["error"]["code"] == "model_not_served"
    refused_batch = api(
        stack,
        "POST",
        "/batches",
        files={"archive": ("b.zip", batch_zip(cough_files[:2]))},
        data={"model": "no-such-model"},
    )
    assert refused_batch.status_code == 422
    assert refused_batch.json()["error"]["code"] == "model_not_served"

    # A batch for each model: every item scored with the batch's model.
    data = batch_zip(cough_files[:4])
    first = submit_batch(stack, data)
    other = submit_batch(stack, data, model=OTHER_NAME)
    assert first["model"]["id"] == DEFAULT_NAME and other["model"]["id"] == OTHER_NAME
    for body, name in ((first, DEFAULT_NAME), (other, OTHER_NAME)):
        wait_batch(stack, body["id"])
        got = items(stack, body["id"])
        assert len(got) == 4
        assert {i["result"]["model_id"] for i in got if i["status"] == "succeeded"} == {name}
        assert {i["model"]["id"] for i in got} == {name}

    # The client and the CLI choose the model the same way.
    client = Client(stack.url)
    job = client.submit(audio, model=OTHER_NAME).wait(timeout=120)
    assert job.model == f"{OTHER_NAME}@{OTHER_VERSION}"
    assert job.result is not None and job.result.model_id == OTHER_NAME
    with pytest.raises(RequestRefused) as refusal:
        client.submit(audio, model="no-such-model")
    assert refusal.value.code == "model_not_served"
    cli = subprocess.run(
        [
            *(str(BIN / "tussis"), "rescore", other["id"], "--model", DEFAULT_NAME),
            *("--server", stack.url, "--wait", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert cli.returncode == 0, cli.stderr
    by_cli = json.loads(cli.stdout)
    assert by_cli["rescored_from"] == other["id"] and by_cli["status"] == "completed"
    assert by_cli["model"]["id"] == DEFAULT_NAME
    by_client = client.rescore(by_cli["id"], model=OTHER_NAME).wait(progress=False, timeout=180)
    assert (by_client.rescored_from, by_client.model) == (
        by_cli["id"],
        f"{OTHER_NAME}@{OTHER_VERSION}",
    )

    # Rescoring: no upload, a new batch linked to the first, the same items.
    not_finished = api(stack, "POST", "/batches/nonexistent/rescore", data={"model": OTHER_NAME})
    assert not_finished.status_code == 404
    again = api(stack, "POST", f"/batches/{first['id']}/rescore", data={"model": OTHER_NAME})
    assert again.status_code == 202, again.text
    rescored = again.json()
    assert again.headers["Location"] == f"/api/v1/batches/{rescored['id']}"
    assert rescored["id"] != first["id"] and rescored["rescored_from"] == first["id"]
    assert rescored["model"] == {"id": OTHER_NAME, "version": OTHER_VERSION}
    assert rescored["total"] == 4
    wait_batch(stack, rescored["id"])
    before, after = items(stack, first["id"]), items(stack, rescored["id"])
    keep = ("path", "label", "group")
    assert [[i[k] for k in keep] + [i["audio"]["sha256"]] for i in after] == [
        [i[k] for k in keep] + [i["audio"]["sha256"]] for i in before
    ]
    assert {i["result"]["model_id"] for i in after if i["result"]} == {OTHER_NAME}
    assert [i["status"] for i in after] == [i["status"] for i in before]
    refused_rescore = api(stack, "POST", f"/batches/{first['id']}/rescore", data={"model": "x"})
    assert refused_rescore.json()["error"]["code"] == "model_not_served"

    # The copy is the new batch's own: deleting the first leaves it whole, and it can
    # be rescored in turn; the deleted one cannot, and says why.
    assert api(stack, "DELETE", f"/batches/{first['id']}").status_code == 204
    gone = api(stack, "POST", f"/batches/{first['id']}/rescore")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "audio_purged"
    third = api(stack, "POST", f"/batches/{rescored['id']}/rescore", data={"model": DEFAULT_NAME})
    assert third.status_code == 202, third.text
    third_body = wait_batch(stack, third.json()["id"])
    assert third_body["total"] == 4 and third_body["rescored_from"] == rescored["id"]

    # Retention purges the audio of the rescored batch: rescoring it is refused with the
    # setting that decides how long rescoring is possible.
    storage = make_storage(settings.storage_url, settings.database_url)
    expired = settings.changed(audio_retention=timedelta(seconds=1))
    purge(expired, storage, now=utcnow() + timedelta(seconds=5))
    purged = api(stack, "POST", f"/batches/{rescored['id']}/rescore", data={"model": OTHER_NAME})
    assert purged.status_code == 410, purged.text
    error = purged.json()["error"]
    assert error["code"] == "audio_purged"
    assert "TUSSIS_AUDIO_RETENTION" in error["message"] and "7 days" in error["message"]


def test_a_worker_takes_only_the_work_of_its_models_and_work_left_for_a_retired_one_fails(
    stack: Stack, settings: Settings, other_bundle: Path, tmp_path: Path, cough_files: list[Path]
) -> None:
    """One worker serves only the second model, another only the default; the default's
    worker is retired: its queued job is never taken by the other worker, and fails with
    ``model_not_served`` once TUSSIS_MODEL_GRACE has passed."""
    only_other = stack  # the API, and a worker serving the second model alone
    only_other.env["TUSSIS_MODEL_BUNDLES"] = str(other_bundle)
    only_default = Stack(settings, tmp_path, TUSSIS_MODEL_BUNDLES=str(DEFAULT))
    try:
        only_other.start_api()
        only_default.start_worker()
        only_other.start_worker()
        audio = cough_files[1].read_bytes()
        for_other = submit(stack, audio, {"model": OTHER_NAME}).json()["id"]
        for_default = submit(stack, audio, {"model": DEFAULT_NAME}).json()["id"]
        assert stack.wait_done(for_other)["result"]["model_id"] == OTHER_NAME
        assert stack.wait_done(for_default)["result"]["model_id"] == DEFAULT_NAME
        log_other = only_other.worker_log.read_text()
        log_default = only_default.worker_log.read_text()
        assert for_other in log_other and for_other not in log_default
        assert for_default in log_default and for_default not in log_other

        # A labelled batch of the second model is evaluated by a worker that holds its
        # bundle, so the items it was trained on are found and left out: evaluated by
        # the default's worker, its split would be unknown and nothing left out.
        split = json.loads((other_bundle / "split.json").read_text())
        digest = {f: sha256(f.read_bytes()).hexdigest() for f in cough_files[:200]}
        unseen = set(split["train"]) | set(split["conflicting_labels"])
        trained = [f for f in cough_files[:200] if digest[f] in split["train"]][:2]
        fair = [f for f in cough_files[:200] if digest[f] not in unseen][:4]
        labelled = submit_batch(stack, batch_zip(trained + fair), model=OTHER_NAME)
        wait_batch(stack, labelled["id"])

        def evaluated() -> dict[str, Any] | None:
            answer = api(stack, "GET", f"/batches/{labelled['id']}/evaluation")
            assert answer.status_code in (200, 202), answer.text
            return answer.json() if answer.status_code == 200 else None

        training = wait_until(evaluated, 120, "the evaluation", 0.5)["training_items"]
        assert training["split_known"] is True, training
        assert training["left_out"] == 2, training
        assert labelled["id"] not in only_default.worker_log.read_text()

        # Retire the default's worker; its model stays accepted for TUSSIS_MODEL_GRACE.
        only_default.stop()
        waiting = submit(stack, audio, {"model": DEFAULT_NAME})
        assert waiting.status_code == 202, waiting.text
        job_id = waiting.json()["id"]
        batch = submit_batch(stack, batch_zip(cough_files[:2]), model=DEFAULT_NAME)
        # The remaining worker never takes it (its queue is not that worker's) ...
        assert stack.job(job_id)["status"] == "queued"
        # ... and once the grace has passed the sweeper fails it, with its code.
        failed = stack.wait_done(job_id, timeout=60)
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "model_not_served"
        assert "TUSSIS_MODEL_GRACE" in failed["error"]["message"]
        assert failed["attempts"] == 0
        body = wait_batch(stack, batch["id"])
        assert body["counts"]["failed"] == 2
        assert {i["error"]["code"] for i in items(stack, batch["id"])} == {"model_not_served"}
        # No longer active, so no longer accepted; the second model still is.
        models = api(stack, "GET", "/models").json()["models"]
        active = {m["id"] for m in models if m["role"] == "diagnosis" and m["active"]}
        assert DEFAULT_NAME not in active and OTHER_NAME in active
        refused = submit(stack, audio, {"model": DEFAULT_NAME})
        assert refused.status_code == 422
        assert refused.json()["error"]["served"] == [f"{OTHER_NAME}@{OTHER_VERSION}"]
        # Without `model`, the default is now the model still served.
        assert submit(stack, audio).json()["model"]["id"] == OTHER_NAME
    finally:
        only_default.stop()


def test_the_page_offers_the_served_models_and_sends_the_chosen_one(
    stack: Stack,
    playwright: Any,  # noqa: F811 - the fixture imported from tests/api/test_web.py
    cough_file: Path,
) -> None:
    """The selector in headless Chromium: fed by /api/v1/models, the default chosen, and
    the job of a file sent after choosing the second model is scored by that model."""
    stack.start_api()
    stack.start_worker()
    with browser(playwright, stack.url) as session:
        page, expect = session.page, _expect()
        expect(page.locator("#model-picker")).to_be_visible()
        options = page.locator("#model-select option")
        values = options.evaluate_all("os => os.map(o => o.value)")
        assert f"{OTHER_NAME}@{OTHER_VERSION}" in values
        assert any(v.startswith(f"{DEFAULT_NAME}@") for v in values)
        chosen = page.locator("#model-select").input_value()
        assert chosen.startswith(f"{DEFAULT_NAME}@")  # the server's default
        expect(page.locator("#model-select option:checked")).to_contain_text("default")
        page.select_option("#model-select", f"{OTHER_NAME}@{OTHER_VERSION}")
        accepted = _submitted_job(page, lambda: page.set_input_files("#file-input", cough_file))
        assert accepted["model"] == {"id": OTHER_NAME, "version": OTHER_VERSION}
        expect(page.locator("#result-model")).to_have_text(
            f"{OTHER_NAME} · version {OTHER_VERSION}", timeout=120_000
        )
        session.assert_only_loopback()
        session.assert_clean()


INCEPTION = PROJECT_ROOT / "models" / "inception"


def test_the_shipped_yamnet_and_inception_bundles_each_score_a_job_and_a_batch(
    tmp_path: Path, fresh_postgres_url: str, redis_url: str, cough_files: list[Path]
) -> None:
    """The deployment `make run` starts: both shipped diagnosis bundles in one worker,
    each child loading both; a job and a batch for each, each scored by its own model.
    (The one test here that loads Inception V3: seconds and about 0.9 GiB per child.)"""
    require((INCEPTION / "manifest.json").is_file(), "no Inception bundle in models/inception")
    inception = json.loads((INCEPTION / "manifest.json").read_text())
    weights = (INCEPTION / inception["backbone"]["pretrained"]["path"]).resolve()
    require(weights.is_file(), f"no Inception V3 backbone at {weights}")
    database_url = normalise_database_url(fresh_postgres_url)
    migrate(database_url)  # of its own, without other tests' API keys (as above)
    settings = base_settings(
        tmp_path,
        database_url=database_url,
        broker_url=redis_url,
        model_bundles=(DEFAULT, INCEPTION),
    )
    stack = Stack(settings, tmp_path)
    try:
        stack.start_api()
        stack.start_worker()
        audio = cough_files[2].read_bytes()
        names = {DEFAULT_NAME, inception["name"]}
        served = {m["id"] for m in api(stack, "GET", "/models").json()["models"] if m["active"]}
        assert names <= served
        data = batch_zip(cough_files[:3])
        for name in sorted(names):
            job = stack.wait_done(submit(stack, audio, {"model": name}).json()["id"])
            assert job["model"]["id"] == name
            assert job["status"] == "succeeded", job
            assert job["result"]["model_id"] == name
            batch = submit_batch(stack, data, model=name)
            wait_batch(stack, batch["id"])
            got = items(stack, batch["id"])
            assert len(got) == 3
            assert {i["result"]["model_id"] for i in got if i["result"]} == {name}
            assert any(i["status"] == "succeeded" for i in got)
    finally:
        stack.stop()
