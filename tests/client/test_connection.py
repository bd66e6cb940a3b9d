"""The client's retries (tussis/connection.py): urllib3's Retry on the session.

A real deployment cannot be made to answer 503 or 429 on demand, so a small local HTTP
server plays a server under load; tests/client/test_rate_limit.py has the API's own
rate limit, tests/client/test_library.py the real stack.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tussis import Client, RequestRefused, ServerUnreachable, UsageProblem
from tussis.files import LocalFile

Answer = tuple[int, dict[str, str], dict]


class Scripted:
    """Answers each request with the next scripted answer (the last one repeats) and
    records (method, path, headers) of every request."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, str, dict[str, str], float]] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                scripted.seen.append(
                    (self.command, self.path, dict(self.headers), time.monotonic())
                )
                index = min(len(scripted.seen), len(scripted.answers)) - 1
                status, headers, body = scripted.answers[index]
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[[list[Answer]], Scripted]]:
    servers: list[Scripted] = []

    def start(answers: list[Answer]) -> Scripted:
        servers.append(Scripted(answers))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def busy(status: int, retry_after: str) -> Answer:
    code = {429: "rate_limited", 503: "database_unavailable"}[status]
    return status, {"Retry-After": retry_after}, {"error": {"code": code, "message": "busy"}}


MODELS = {
    "models": [{"id": "m", "version": "1", "role": "diagnosis", "active": True, "added_later": [1]}]
}


def test_503_and_429_are_retried_as_retry_after_says(scripted) -> None:
    # Seconds, then an HTTP date (whole seconds) 4 s after the script is written: the
    # second answer comes about 1 s later, so it asks for 2 to 3 s more.
    until = formatdate(time.time() + 4, usegmt=True)
    server = scripted([busy(503, "1"), busy(429, until), (200, {}, MODELS)])
    models = Client(server.url).models()
    assert [(m.id, m.version, m.role, m.active) for m in models] == [("m", "1", "diagnosis", True)]
    times = [t for *_, t in server.seen]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.9  # waited the 1 s of Retry-After
    assert times[2] - times[1] >= 1.5  # and until the HTTP date


def test_a_server_that_stays_busy_ends_with_its_own_error(scripted) -> None:
    server = scripted([busy(503, "0")])
    with pytest.raises(RequestRefused) as refused:
        Client(server.url).models()
    assert (refused.value.status, refused.value.code) == (503, "database_unavailable")
    assert len(server.seen) == 6  # the first try and five retries


def test_a_job_is_sent_again_under_its_idempotency_key(scripted) -> None:
    job = {"id": "j1", "status": "queued", "audio": {"filename": "a.wav"}, "result": None}
    server = scripted([busy(503, "0"), (202, {"Retry-After": "2"}, job)])
    submitted = Client(server.url).submit(b"RIFF....", filename="a.wav")
    assert (submitted.id, submitted.status, submitted.filename) == ("j1", "queued", "a.wav")
    keys = [headers.get("Idempotency-Key") for _, _, headers, _ in server.seen]
    assert len(keys) == 2 and keys[0] and keys[0] == keys[1]


def test_a_streamed_batch_upload_is_not_sent_twice(scripted, tmp_path) -> None:
    server = scripted([busy(503, "0"), (201, {}, {"id": "b1"})])
    recording = tmp_path / "a.wav"
    recording.write_bytes(b"RIFF....")
    digest = hashlib.sha256(b"RIFF....").hexdigest()
    with pytest.raises(RequestRefused) as refused:
        Client(server.url).create_batch([LocalFile(recording, "a.wav", 8, digest)])
    assert refused.value.status == 503
    assert len(server.seen) == 1  # tussis.submit resumes instead


def test_health_reports_a_service_that_is_not_ready(scripted) -> None:
    body = {
        "error": {"code": "not_ready", "message": "Not ready: cannot reach the broker."},
        "checks": {"database": "ok", "broker": "unreachable"},
    }
    server = scripted([(503, {"Retry-After": "5"}, body)])
    started = time.monotonic()
    health = Client(server.url).health()
    assert time.monotonic() - started < 4  # not retried: the answer is the news
    assert not health.ready and health.status == "not_ready"
    assert health.checks == {"database": "ok", "broker": "unreachable"}
    assert health.message == "Not ready: cannot reach the broker."


def test_configuration_comes_from_the_environment(monkeypatch, scripted) -> None:
    server = scripted([(200, {}, MODELS)])
    monkeypatch.delenv("TUSSIS_SERVER", raising=False)
    monkeypatch.delenv("TUSSIS_URL", raising=False)
    monkeypatch.delenv("TUSSIS_API_KEY", raising=False)
    with pytest.raises(UsageProblem, match="TUSSIS_URL"):
        Client()
    monkeypatch.setenv("TUSSIS_URL", server.url + "/")
    monkeypatch.setenv("TUSSIS_API_KEY", "s3cret")
    client = Client()
    assert client.base_url == server.url
    client.models()
    assert server.seen[-1][2].get("Authorization") == "Bearer s3cret"
    # Arguments win over the environment.
    assert Client("http://example.invalid:1", api_key="other").base_url.endswith(":1")


def test_an_unreachable_server_is_reported_after_a_few_quick_retries(scripted) -> None:
    server = scripted([(200, {}, MODELS)])
    url = server.url
    server.close()
    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match="cannot reach"):
        Client(url).models()
    assert time.monotonic() - started < 10


def test_the_results_csv_written_never_starts_a_formula_whatever_the_server_sent(
    tmp_path: Path,
) -> None:
    """``tussis results`` and ``Batch.to_csv`` apply the CSV cell rule themselves
    (tussis/csv_cells.py), so a file they write is safe to open in a spreadsheet even
    from a server that predates it. This one plays such a server."""
    from tests.stack import BIN

    older = (
        b"path,status,label,group,score\r\n"
        b'"=HYPERLINK(""http://evil.example"",""open"").wav",succeeded,=1+1,@SUM(1+1),0.25\r\n'
        b'+cmd.wav,failed,-2+3,"multi\nline",-0.5\r\n'
        b"plain.wav,succeeded,sick,site-a,1e-3\r\n"
    )

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            if self.path.endswith("/results.csv"):
                body, kind = older, "text/csv"
            else:
                body, kind = (
                    json.dumps({"id": "b1", "status": "completed"}).encode(),
                    "application/json",
                )
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUSSIS_")}
    try:
        out = tmp_path / "results.csv"
        written = subprocess.run(
            [str(BIN / "tussis"), "results", "b1", "--server", url, "--out", str(out)],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        printed = subprocess.run(
            [str(BIN / "tussis"), "results", "b1", "--server", url],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        library = Client(url).batch("b1").to_csv(tmp_path / "library.csv")
    finally:
        server.shutdown()
        server.server_close()
    assert written.returncode == 0 and printed.returncode == 0, (written.stderr, printed.stderr)
    expected = [
        ["path", "status", "label", "group", "score"],
        [
            '\'=HYPERLINK("http://evil.example","open").wav',
            "succeeded",
            "'=1+1",
            "'@SUM(1+1)",
            "0.25",
        ],
        ["'+cmd.wav", "failed", "'-2+3", "multi\nline", "-0.5"],
        ["plain.wav", "succeeded", "sick", "site-a", "1e-3"],
    ]
    assert list(csv.reader(out.open(newline=""))) == expected
    assert list(csv.reader(io.StringIO(printed.stdout, newline=""))) == expected
    assert list(csv.reader(library.open(newline=""))) == expected


def _job(status: str) -> dict:
    return {"id": "j1", "status": status, "audio": {}, "result": None, "error": None}


def test_job_wait_falls_back_to_retry_after_polls_when_the_server_ignores_prefer_wait(
    scripted: Callable[[list[Answer]], Scripted],
) -> None:
    """An older server answers a long poll at once, without Preference-Applied: the client
    then waits Retry-After between plain polls instead of asking again at once."""
    server = scripted(
        [
            (200, {"Retry-After": "1"}, _job("queued")),
            (200, {"Retry-After": "1"}, _job("queued")),
            (200, {}, _job("succeeded")),
        ]
    )
    job = Client(server.url).job("j1")
    assert job.wait(timeout=30).status == "succeeded"
    polls = server.seen[1:]  # after the first GET (Client.job)
    assert polls[0][2].get("Prefer", "").startswith("wait=")  # asked once...
    assert all("Prefer" not in headers for _, _, headers, _ in polls[1:])  # ...then plain
    assert polls[-1][3] - polls[-2][3] >= 0.9  # and as Retry-After said


def test_job_wait_long_polls_again_at_once_while_the_server_waits(
    scripted: Callable[[list[Answer]], Scripted],
) -> None:
    applied = {"Preference-Applied": "wait=60", "Retry-After": "30", "ETag": '"a"'}
    server = scripted(
        [
            (200, {"Retry-After": "30"}, _job("queued")),
            (200, applied, _job("queued")),  # a long poll that ended without news
            (200, {**applied, "ETag": '"b"'}, _job("succeeded")),
        ]
    )
    started = time.monotonic()
    job = Client(server.url).job("j1").wait(timeout=30)
    assert job.status == "succeeded"
    assert time.monotonic() - started < 10  # never slept the 30 s Retry-After
    polls = server.seen[1:]
    # Each a long poll, none longer than the time the caller has left.
    assert all(0 < int(h["Prefer"].removeprefix("wait=")) <= 30 for _, _, h, _ in polls)
    assert polls[1][2].get("If-None-Match") == '"a"'  # the state it already has
