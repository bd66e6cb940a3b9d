"""``tussis submit`` never creates a second batch when the answer to the creating
request is lost: the real ``tussis`` executable, a real gunicorn API on PostgreSQL +
Redis, and a proxy between them that lets the request through to the server but
drops the connection instead of passing the answer back."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from shared.audio import AudioError, check_usable, decode
from shared.config import Settings, normalise_database_url
from tests.conftest import base_settings
from tests.stack import BIN, Stack

pytestmark = pytest.mark.integration

TUSSIS = str(BIN / "tussis")
TOKEN = "idem-token"


@pytest.fixture(scope="module")
def owner() -> str:
    return f"idem-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, redis_url: str, owner: str
) -> Iterator[Stack]:
    """The API alone: creating a batch needs no worker."""
    tmp = tmp_path_factory.mktemp("idem-stack")
    settings: Settings = base_settings(
        tmp, database_url=normalise_database_url(postgres_url), broker_url=redis_url
    )
    stack = Stack(settings, tmp, TUSSIS_API_KEYS=f"{owner}:{TOKEN}")
    stack.start_api()
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def recordings(cough_files: list[Path]) -> list[Path]:
    usable: list[Path] = []
    for path in cough_files:
        try:
            check_usable(decode(path.read_bytes()), 0.3, 120.0, -60.0)
        except AudioError:
            continue
        usable.append(path)
        if len(usable) == 6:
            return usable
    raise AssertionError("too few usable recordings")


class DroppingProxy:
    """Forwards everything to the API. The first ``drops`` batch creations
    (``POST /api/v1/batches``) reach the server whole, but their answer is thrown away
    and the client's connection closed: what a client sees when a connection drops
    after the server did the work."""

    def __init__(self, upstream: str, drops: int) -> None:
        self.upstream = upstream
        self.drops = drops
        self.create_keys: list[str | None] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in {"host", "connection", "content-length"}
                }
                drop = False
                if self.command == "POST" and self.path == "/api/v1/batches":
                    with proxy.lock:
                        proxy.create_keys.append(self.headers.get("Idempotency-Key"))
                        drop = proxy.drops > 0
                        proxy.drops -= 1 if drop else 0
                answer = requests.request(
                    self.command, proxy.upstream + self.path, data=body, headers=headers,
                    timeout=120,
                )  # fmt: skip
                if drop:
                    self.close_connection = True  # no status line: the client sees a drop
                    return
                self.send_response(answer.status_code)
                for k, v in answer.headers.items():
                    if k.lower() not in {"connection", "transfer-encoding", "content-length"}:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> DroppingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def link(root: Path, files: list[Path]) -> None:
    root.mkdir(parents=True)
    for f in files:
        (root / f.name).symlink_to(f)


def submit(root: Path, server: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TUSSIS, "submit", str(root), "--server", server, "--api-key", TOKEN, "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )


def owner_batches(api: Stack) -> list[dict]:
    r = requests.get(
        f"{api.url}/api/v1/batches",
        params={"limit": 200},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()["batches"]


def test_a_dropped_creation_is_retried_with_the_same_key_and_makes_one_batch(
    api: Stack, recordings: list[Path], tmp_path: Path
) -> None:
    link(tmp_path / "rec", recordings[:3])
    before = {b["id"] for b in owner_batches(api)}
    with DroppingProxy(api.url, drops=1) as proxy:
        run = submit(tmp_path / "rec", proxy.url, tmp_path)
    assert run.returncode == 0, run.stderr
    assert "sending the same request again" in run.stderr
    # Two attempts reached the server, under one key.
    assert len(proxy.create_keys) == 2
    assert proxy.create_keys[0] and proxy.create_keys[0] == proxy.create_keys[1]
    report = json.loads(run.stdout)
    new = [b for b in owner_batches(api) if b["id"] not in before]
    assert [b["id"] for b in new] == [report["batch_id"]]  # one batch, the replayed one
    assert new[0]["total"] == 3
    assert report["accepted"] == report["uploaded"] == 3 and report["rejected"] == []
    assert list(tmp_path.glob(".tussis-submit-*.json")) == []


def test_a_rerun_after_lost_creations_reuses_the_key_from_the_state_file(
    api: Stack, recordings: list[Path], tmp_path: Path
) -> None:
    link(tmp_path / "rec", recordings[3:6])
    before = {b["id"] for b in owner_batches(api)}
    with DroppingProxy(api.url, drops=100) as proxy:
        first = submit(tmp_path / "rec", proxy.url, tmp_path)
        assert first.returncode == 3, first.stderr  # gave up: the server seemed unreachable
        [state_file] = tmp_path.glob(".tussis-submit-*.json")
        state = json.loads(state_file.read_text())
        assert state["batch_id"] == "" and state["idempotency_key"]
        assert len(state["first_part"]) == 3
        created = [b for b in owner_batches(api) if b["id"] not in before]
        assert len(created) == 1  # the first attempt did create it; retries were replays

        proxy.drops = 0
        second = submit(tmp_path / "rec", proxy.url, tmp_path)
    assert second.returncode == 0, second.stderr
    assert set(proxy.create_keys) == {state["idempotency_key"]}
    assert len(proxy.create_keys) == 1 + 3 + 1  # first try, 3 retries, the rerun
    report = json.loads(second.stdout)
    assert report["batch_id"] == created[0]["id"]
    assert report["accepted"] == 3 and report["rejected"] == []
    assert [b["id"] for b in owner_batches(api) if b["id"] not in before] == [report["batch_id"]]
    assert list(tmp_path.glob(".tussis-submit-*.json")) == []
