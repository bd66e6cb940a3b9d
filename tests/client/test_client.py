"""``tussis submit | status | results``: the real ``tussis`` executable against a real
stack (gunicorn + celery worker on PostgreSQL + Redis, the tiny bundle)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.audio import AudioError, check_usable, decode
from shared.config import Settings, normalise_database_url
from tests.conftest import base_settings
from tests.stack import BIN, Stack, free_port, wait_until

pytestmark = pytest.mark.integration

TUSSIS = str(BIN / "tussis")
CSV_HEADER = [
    "path", "status", "diagnosis", "score", "cough_detected", "cough_score", "cough_threshold",
    "error_code", "error_message", "model_id", "model_version", "label", "group", "sha256",
    "job_id",
]  # fmt: skip


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_settings(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str, tiny_bundle: Path
) -> Settings:
    return base_settings(
        tmp_path_factory.mktemp("client-stack"),
        database_url=normalise_database_url(postgres_url),
        broker_url=redis_url,
        model_bundle=tiny_bundle,
    )


@pytest.fixture(scope="module")
def stack(module_settings: Settings) -> Iterator[Stack]:
    """One API and one worker for the module (the worker takes a while to load)."""
    s = Stack(module_settings, module_settings.data_dir)
    s.start_api()
    s.start_worker()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def recordings(cough_files: list[Path]) -> list[Path]:
    """Real recordings the API accepts (decodable, long and loud enough)."""
    usable: list[Path] = []
    for path in cough_files:
        try:
            check_usable(decode(path.read_bytes()), 0.3, 120.0, -60.0)
        except AudioError:
            continue
        usable.append(path)
        if len(usable) == 40:
            break
    assert len(usable) >= 35
    return usable


def link_tree(root: Path, layout: dict[str, list[Path]]) -> dict[str, Path]:
    """Symlink recordings into ``root/<folder>/``; returns {relative path: file}."""
    rel: dict[str, Path] = {}
    for folder, files in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for f in files:
            (root / folder / f.name).symlink_to(f)
            rel[f"{folder}/{f.name}"] = f
    return rel


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def client_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSIS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def tussis(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TUSSIS, *args],
        cwd=cwd,
        env=client_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def state_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".tussis-submit-*.json"))


def server_items(url: str, batch_id: str, headers: dict[str, str] | None = None) -> list[dict]:
    items: list[dict] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        r = requests.get(
            f"{url}/api/v1/batches/{batch_id}/items", params=params, headers=headers, timeout=10
        )
        r.raise_for_status()
        page = r.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


class HoldingProxy:
    """A small HTTP proxy in front of the stack. While ``holding``, it reads a part upload
    (``POST .../items``) completely, then holds it until ``release`` is set, and only then
    forwards it: the client is left waiting for that part's answer at a known point."""

    HOP = frozenset(
        {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
    )

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.holding = True
        self.uploads: list[bytes] = []  # every upload's body, in order
        self.held = threading.Event()
        self.release = threading.Event()
        self.forwarded = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "POST" and body:
                    proxy.uploads.append(body)
                hold = proxy.holding and self.command == "POST" and self.path.endswith("/items")
                if hold:
                    proxy.held.set()
                    proxy.release.wait(120)
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in {"host", *proxy.HOP}
                }
                answer = requests.request(
                    self.command,
                    proxy.upstream + self.path,
                    data=body,
                    headers=headers,
                    timeout=120,
                )
                if hold:
                    proxy.forwarded.set()
                try:
                    self.send_response(answer.status_code)
                    for k, v in answer.headers.items():
                        if k.lower() not in proxy.HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except OSError:
                    pass  # the client is gone

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HoldingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


# --- tests -------------------------------------------------------------------------------


def test_submit_a_folder_waits_and_writes_the_csv(
    stack: Stack, recordings: list[Path], tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    expected = link_tree(root, {"site-a": recordings[:6], "site-b": recordings[6:12]})
    (root / "site-b" / "notes.wav").write_text("These are field notes, not a recording.\n")
    out = tmp_path / "results.csv"

    run = tussis(
        "submit", str(root), "--server", stack.url, "--wait", "--out", str(out),
        "--json", "--part-size", "5", "--progress",
        cwd=tmp_path,
    )  # fmt: skip

    assert run.returncode == 1, run.stderr  # one file rejected
    report = json.loads(run.stdout)
    assert report["files"] == 13
    assert report["accepted"] == 12
    assert report["duplicates"] == 0
    assert [r["path"] for r in report["rejected"]] == ["site-b/notes.wav"]
    assert report["rejected"][0]["error"]["code"] in ("not_audio", "undecodable_audio")
    assert report["rejected"][0]["error"]["message"]
    assert report["waited"] is True
    assert report["status"] == "completed"
    assert report["total"] == 12
    assert sum(report["counts"].values()) == 12
    assert report["csv"] == str(out)
    assert report["exit_code"] == 1
    assert "uploading" in run.stderr  # the progress bar went to stderr

    # The server says the same: one batch item per accepted file.
    batch = requests.get(f"{stack.url}/api/v1/batches/{report['batch_id']}", timeout=10).json()
    assert batch["status"] == "completed" and batch["total"] == 12

    rows = list(csv.DictReader(out.open(newline="")))
    assert list(rows[0].keys()) == CSV_HEADER
    assert len(rows) == 12
    assert {r["path"] for r in rows} == set(expected)
    assert {r["status"] for r in rows} <= {"succeeded", "failed"}
    for r in rows:
        assert r["sha256"] == sha256(expected[r["path"]])
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == report["counts"]["failed"] == len(report["failed_items"])

    assert state_files(tmp_path) == []  # done: nothing left to resume


def test_an_interrupted_submit_resumes_without_uploading_anything_twice(
    stack: Stack, recordings: list[Path], tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    expected = link_tree(root, {"day-1": recordings[12:20], "day-2": recordings[20:27]})
    assert len(expected) == 15

    with HoldingProxy(stack.url) as proxy:
        args = ["submit", str(root), "--server", proxy.url, "--json", "--part-size", "3"]
        first = subprocess.Popen(
            [TUSSIS, *args],
            cwd=tmp_path,
            env=client_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As from a terminal: a suite started in the background (`cmd &`) inherits
            # SIGINT ignored, and Python then never raises KeyboardInterrupt.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            # The batch was created with the first part, and the client is now waiting
            # for the answer to the second part, which the proxy holds.
            assert proxy.held.wait(120), first.stderr.read() if first.poll() is not None else ""
            [state_file] = state_files(tmp_path)  # written as soon as the batch exists
            batch_id = json.loads(state_file.read_text())["batch_id"]
            batch = requests.get(f"{stack.url}/api/v1/batches/{batch_id}", timeout=10).json()
            assert batch["status"] == "open"
            assert len(server_items(stack.url, batch["id"])) >= 3
            first.send_signal(signal.SIGINT)
            stdout, stderr = first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == 130, stderr
        assert "interrupted" in stderr and "resume" in stderr
        assert stdout == ""
        [state_file] = state_files(tmp_path)
        state = json.loads(state_file.read_text())
        assert state["batch_id"] == batch["id"] and state["server"] == proxy.url

        # The held part still reaches the server (the client never saw its answer).
        proxy.holding = False
        proxy.release.set()
        assert proxy.forwarded.wait(60)
        wait_until(lambda: len(server_items(stack.url, batch["id"])) == 6, 30, "the held part")

        second = tussis(*args, cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["batch_id"] == batch["id"]
    assert report["resumed"] is True
    assert report["already_on_server"] == 6
    assert report["uploaded"] == 9
    assert report["accepted"] == 15
    assert report["duplicates"] == 0
    assert report["rejected"] == []
    assert report["total"] == 15
    assert report["status"] in ("running", "completed")  # closed
    assert state_files(tmp_path) == []

    items = server_items(stack.url, batch["id"])
    keys = [(i["path"], i["audio"]["sha256"]) for i in items]
    assert len(keys) == len(set(keys)) == 15
    assert set(keys) == {(rel, sha256(f)) for rel, f in expected.items()}


def test_unreachable_server_and_refused_requests(
    module_settings: Settings, recordings: list[Path], tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    link_tree(root, {"a": recordings[27:29]})

    # Nothing listens on this port.
    dead = f"http://127.0.0.1:{free_port()}"
    run = tussis("submit", str(root), "--server", dead, cwd=tmp_path, timeout=60)
    assert run.returncode == 3, run.stderr
    assert "cannot reach" in run.stderr and dead in run.stderr
    assert run.stdout == ""
    assert state_files(tmp_path) == []
    run = tussis("status", "some-batch", "--server", dead, cwd=tmp_path, timeout=60)
    assert run.returncode == 3 and "cannot reach" in run.stderr

    # An API that wants keys: a wrong key is refused, with the API's code and message.
    keyed = Stack(module_settings, tmp_path, TUSSIS_API_KEYS="alice:s3cret")
    keyed.start_api()
    try:
        refusal = requests.get(
            f"{keyed.url}/api/v1/batches", headers={"Authorization": "Bearer wrong"}, timeout=10
        ).json()["error"]
        run = tussis("submit", str(root), "--server", keyed.url, "--api-key", "wrong", cwd=tmp_path)
        assert run.returncode == 4, run.stderr
        assert "invalid_api_key" in run.stderr and refusal["message"] in run.stderr
        assert state_files(tmp_path) == []

        auth = {"Authorization": "Bearer s3cret"}
        unknown = "00000000-0000-0000-0000-000000000000"
        not_found = requests.get(
            f"{keyed.url}/api/v1/batches/{unknown}", headers=auth, timeout=10
        ).json()["error"]
        assert not_found["code"] == "batch_not_found"
        run = tussis("status", unknown, "--server", keyed.url, "--api-key", "s3cret", cwd=tmp_path)
        assert run.returncode == 4, run.stderr
        assert "batch_not_found" in run.stderr and not_found["message"] in run.stderr
        assert run.stdout == ""
        run = tussis("results", unknown, "--server", keyed.url, "--api-key", "s3cret", cwd=tmp_path)
        assert run.returncode == 4 and "batch_not_found" in run.stderr
    finally:
        keyed.stop()


def test_status_and_results_of_a_finished_batch(
    stack: Stack, recordings: list[Path], tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    expected = link_tree(root, {"x": recordings[29:32]})
    run = tussis("submit", str(root), "--server", stack.url, "--wait", "--json", cwd=tmp_path)
    report = json.loads(run.stdout)
    assert report["status"] == "completed", run.stderr
    assert run.returncode == (1 if report["counts"]["failed"] else 0), run.stderr
    batch_id = report["batch_id"]

    run = tussis("status", batch_id, "--server", stack.url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert f"batch {batch_id}: completed" in run.stdout
    assert "3 (0 queued, 0 running" in run.stdout and "progress: 100.0 %" in run.stdout

    run = tussis("status", batch_id, "--server", stack.url, "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    status = json.loads(run.stdout)
    assert (status["id"], status["status"], status["total"]) == (batch_id, "completed", 3)
    assert status["progress"] == 1.0 and status["finished_at"]

    run = tussis("results", batch_id, "--server", stack.url, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(io.StringIO(run.stdout)))
    assert list(rows[0].keys()) == CSV_HEADER
    assert {r["path"] for r in rows} == set(expected)
    assert {r["status"] for r in rows} <= {"succeeded", "failed"}

    out = tmp_path / "out" / "results.csv"
    out.parent.mkdir()
    run = tussis("results", batch_id, "--server", stack.url, "--out", str(out), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""
    assert list(csv.DictReader(out.open(newline=""))) == rows


# --- labels and the evaluation -------------------------------------------------------


@pytest.fixture(scope="module")
def by_label(cough_files: list[Path], cough_metadata: list[dict]) -> dict[bool, list[Path]]:
    """Six usable recordings of each label (True: sick), distinct in content."""
    sick = {m["filename"]: bool(m["covid19"]) for m in cough_metadata}
    chosen: dict[bool, list[Path]] = {True: [], False: []}
    seen: set[str] = set()
    for path in cough_files:
        label = sick[path.name]
        if len(chosen[label]) == 6 or sha256(path) in seen:
            continue
        try:
            check_usable(decode(path.read_bytes()), 0.3, 120.0, -60.0)
        except AudioError:
            continue
        seen.add(sha256(path))
        chosen[label].append(path)
        if all(len(v) == 6 for v in chosen.values()):
            return chosen
    raise AssertionError(f"too few usable recordings: {chosen}")


def labelled_tree(
    root: Path, by_label: dict[bool, list[Path]], per_site: int
) -> tuple[dict[str, Path], dict[str, tuple[str, str]]]:
    """``per_site`` sick and ``per_site`` not sick recordings under site-a/ and site-b/,
    and their labels as ``{path: (label, group)}``."""
    sick = {f.name: label for label, files in by_label.items() for f in files}
    layout = {
        site: by_label[True][i * per_site : (i + 1) * per_site]
        + by_label[False][i * per_site : (i + 1) * per_site]
        for i, site in enumerate(("site-a", "site-b"))
    }
    files = link_tree(root, layout)
    labels = {
        rel: ("sick" if sick[f.name] else "not sick", rel.split("/")[0]) for rel, f in files.items()
    }
    return files, labels


def write_labels(path: Path, labels: dict[str, tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group"])
        for rel, (label, group) in sorted(labels.items()):
            writer.writerow([rel, label, group])
    return path


def test_submit_sends_labels_and_results_shows_the_evaluation(
    stack: Stack, by_label: dict[bool, list[Path]], tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    files, labels = labelled_tree(root, by_label, per_site=3)
    # One file unlabelled, one with a label the model does not have.
    unlabelled = sorted(files)[0]
    del labels[unlabelled]
    odd = sorted(labels)[0]
    labels[odd] = ("maybe", labels[odd][1])
    labels_csv = write_labels(tmp_path / "labels.csv", labels)

    run = tussis(
        "submit", str(root), "--labels", str(labels_csv), "--server", stack.url,
        "--wait", "--json", "--part-size", "4",
        cwd=tmp_path,
    )  # fmt: skip
    report = json.loads(run.stdout)
    assert report["status"] == "completed", run.stderr
    assert report["accepted"] == len(files) == 12
    assert report["labelled"] == len(labels) == 11

    # Every item has the label and group the file gave it, across the three parts.
    items = server_items(stack.url, report["batch_id"])
    assert {i["path"]: (i["label"], i["group"]) for i in items} == {
        rel: labels.get(rel, (None, None)) for rel in files
    }

    # The first request asks the worker, which computes it once (202 until then).
    url = f"{stack.url}/api/v1/batches/{report['batch_id']}/evaluation"
    evaluation = wait_until(
        lambda: (r := requests.get(url, timeout=30)).status_code != 202 and r.json(),
        120,
        "the worker's evaluation",
        0.2,
    )
    overall = evaluation["overall"]
    assert set(evaluation["groups"]) == {"site-a", "site-b"}
    # Every labelled item is counted once: scored (in the headline, or left out as one
    # the tiny bundle was trained on), a label error, refused by the gate or failed.
    errors = evaluation_count(evaluation["label_errors"])
    trained = evaluation["training_items"]["left_out"]
    counted = overall["n"] + trained + errors + evaluation["rejected_by_gate"]
    assert counted + evaluation["failed"] == 11
    assert errors == 1 and evaluation["label_errors"]["examples"] == [
        {"path": odd, "label": "maybe"}
    ]
    assert evaluation["unlabelled"] == 1

    # --json prints the API's evaluation as it is.
    run = tussis("results", report["batch_id"], "--server", stack.url, "--evaluation",
                 "--json", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == evaluation

    # The table: overall and per group, with the API's numbers.
    figures = tmp_path / "figures"
    run = tussis("results", report["batch_id"], "--server", stack.url, "--evaluation",
                 "--figures", str(figures), cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"evaluation of batch {report['batch_id']}: model tiny-test")

    def row(name: str, metrics: dict) -> list[str]:
        # The first such line: the headline table (the baselines' table follows it).
        line = next(line for line in lines if line.strip().startswith(name))
        cells = line.split()
        c = metrics["confusion"]
        assert cells[-4:] == [str(c[k]) for k in ("tp", "fn", "tn", "fp")]
        return cells

    cells = row("overall", overall)
    assert cells[1:3] == [str(overall["n"]), str(overall["positives"])]
    auc = "-" if overall["auc"] is None else f"{overall['auc']:.3f}"
    assert cells[3] == auc
    if overall["auc_ci"] and overall["auc_ci"][0] is not None:
        lo, hi = overall["auc_ci"]
        assert cells[4] == f"{lo:.3f}-{hi:.3f}"
    for name, metrics in evaluation["groups"].items():
        cells = row(f"group {name}", metrics)  # two words: "group", the name
        assert cells[2:4] == [str(metrics["n"]), str(metrics["positives"])]
        assert cells[4] == ("-" if metrics["auc"] is None else f"{metrics['auc']:.3f}")
    group_only = evaluation["group_only_auc"]
    assert f"group-only AUC: {'-' if group_only is None else f'{group_only:.3f}'}" in run.stdout
    assert "1 label errors" in run.stdout
    assert f"    {odd}: 'maybe'" in run.stdout
    for name in ("roc.png", "calibration.png"):
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Training items (the tiny bundle was trained on some of these recordings) are said
    # before the figures, and the baselines follow them.
    if evaluation["training_items"]["left_out"]:
        assert f"{evaluation['training_items']['left_out']} of the" in run.stdout
        assert "FLATTERING" in run.stdout
    assert "trivial baselines" in run.stdout
    base = evaluation["baselines"]["overall"]
    assert (
        any(
            line.split()[:2] == ["overall", f"{base['model_auc']:.3f}"]
            for line in lines
            if base["model_auc"] is not None
        )
        or base["model_auc"] is None
    )

    # --compare: the same recordings again as a second batch, compared with the first.
    run = tussis(
        "submit", str(root), "--labels", str(labels_csv), "--server", stack.url,
        "--wait", "--json", cwd=tmp_path,
    )  # fmt: skip
    other = json.loads(run.stdout)["batch_id"]
    compare_dir = tmp_path / "compare-figures"
    run = tussis("results", report["batch_id"], "--server", stack.url, "--evaluation",
                 "--compare", other, "--json", "--figures", str(compare_dir),
                 cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    compared = json.loads(run.stdout)
    assert compared == requests.get(f"{url}?compare={other}", timeout=30).json()
    assert compared["items"]["compared"] == overall["n"]
    assert (compare_dir / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = tussis("results", report["batch_id"], "--server", stack.url, "--evaluation",
                 "--compare", other, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"comparison of batch {report['batch_id']}")
    first_row = next(line for line in run.stdout.splitlines() if line.strip().startswith("overall"))
    o = compared["overall"]
    assert first_row.split()[1:4] == [
        str(o["n"]),
        f"{o['auc_first']:.3f}",
        f"{o['auc_second']:.3f}",
    ]
    # The library: Batch.compare gives the same figures.
    from tussis import Client

    comparison = Client(stack.url).batch(report["batch_id"]).compare(other)
    assert comparison.overall.auc_first == o["auc_first"]
    assert comparison.items["compared"] == compared["items"]["compared"]
    # Refused with the API's code and exit status 4.
    run = tussis("results", report["batch_id"], "--server", stack.url, "--evaluation",
                 "--compare", "no-such-batch", cwd=tmp_path)  # fmt: skip
    assert run.returncode == 4 and "compare_batch_not_found" in run.stderr


def evaluation_count(value: Any) -> int:
    """A count the API gives as a number or as ``{"count", "examples"}``."""
    return int(value["count"]) if isinstance(value, dict) else int(value)


def test_results_evaluation_of_an_unfinished_batch_is_refused(
    stack: Stack, recordings: list[Path], tmp_path: Path
) -> None:
    with recordings[0].open("rb") as fh:
        created = requests.post(
            f"{stack.url}/api/v1/batches",
            files=[("files", (recordings[0].name, fh))],
            data={"open": "true"},
            timeout=60,
        )
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]  # open: it cannot have finished
    refusal = requests.get(f"{stack.url}/api/v1/batches/{batch_id}/evaluation", timeout=10)
    assert refusal.status_code == 409
    run = tussis("results", batch_id, "--server", stack.url, "--evaluation", cwd=tmp_path)
    assert run.returncode == 4, run.stderr
    assert "batch_not_finished" in run.stderr
    assert refusal.json()["error"]["message"] in run.stderr
    assert run.stdout == ""
    run = tussis("results", batch_id, "--server", stack.url, "--json", cwd=tmp_path)
    assert run.returncode == 2 and "--evaluation" in run.stderr


def test_a_resumed_submit_sends_each_label_once(
    stack: Stack, by_label: dict[bool, list[Path]], tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    files, labels = labelled_tree(root, by_label, per_site=2)
    labels_csv = write_labels(tmp_path / "labels.csv", labels)

    with HoldingProxy(stack.url) as proxy:
        args = ["submit", str(root), "--labels", str(labels_csv), "--server", proxy.url,
                "--json", "--part-size", "3"]  # fmt: skip
        first = subprocess.Popen(
            [TUSSIS, *args],
            cwd=tmp_path,
            env=client_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            # Interrupted while the server is held on the second part.
            assert proxy.held.wait(120), first.stderr.read() if first.poll() is not None else ""
            first.send_signal(signal.SIGINT)
            first.communicate(timeout=60)
        finally:
            if first.poll() is None:
                first.kill()
        assert first.returncode == 130
        proxy.holding = False
        proxy.release.set()
        assert proxy.forwarded.wait(60)
        [state_file] = state_files(tmp_path)
        batch_id = json.loads(state_file.read_text())["batch_id"]
        wait_until(lambda: len(server_items(stack.url, batch_id)) == 6, 30, "the held part")
        second = tussis(*args, cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["batch_id"] == batch_id
    assert report["resumed"] is True and report["already_on_server"] == 6
    assert report["accepted"] == len(files) == 8
    items = server_items(stack.url, report["batch_id"])
    assert {i["path"]: (i["label"], i["group"]) for i in items} == labels

    # Each upload carried the labels of its own files, so each path was labelled once.
    labelled: list[str] = []
    for body in proxy.uploads:
        sent = set(re.findall(rb'name="files"; filename="([^"]+)"', body))
        match = re.search(
            rb'filename="labels.csv"\r\nContent-Type: text/csv\r\n\r\n(.*?)\r\n--', body, re.S
        )
        assert match, body[:300]
        rows = list(csv.DictReader(io.StringIO(match.group(1).decode())))
        assert {r["path"].encode() for r in rows} == sent
        labelled += [r["path"] for r in rows]
    assert sorted(labelled) == sorted(files)
