"""Hostile clients against a real gunicorn (two sync workers, as deployed) on the
embedded defaults, the way an independent review attacked a fresh clone (issue 24):
a zip whose member list is millions of entries long, made-up HTTP methods, a
non-ASCII metrics token, a DNS-rebinding Host, chunked uploads past the byte budget,
and slow connections that hold sockets open (through the nginx of deploy/nginx.conf).

Each test failed before its fix; docs/security.md lists them."""

from __future__ import annotations

import json
import re
import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import base_settings, migrate
from tests.ops.test_metrics import samples
from tests.stack import NginxProxy, Stack, free_port, wait_until

pytestmark = pytest.mark.integration

METRICS_TOKEN = "scrape-token"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The review's set-up: no key (open mode, loopback only), SQLite, gunicorn with
    two sync workers; a metrics token is set."""
    tmp = tmp_path_factory.mktemp("hostile-clients")
    settings = base_settings(tmp)
    migrate(settings.database_url)
    stack = Stack(settings, tmp, TUSSIS_METRICS_TOKEN=METRICS_TOKEN)
    stack.start_api()
    yield stack
    stack.stop()


# --- raw HTTP ----------------------------------------------------------------------------


def exchange(
    port: int, request: bytes, timeout: float = 30, half_close: bool = True
) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as is, end the sending side (a body shorter than declared ends
    there; nginx takes it as the client leaving), and read the answer until the server
    closes: status, headers (lower-case names), body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


# --- memory of the gunicorn workers ------------------------------------------------------


def worker_pids(stack: Stack) -> list[int]:
    assert stack.api is not None
    children = Path(f"/proc/{stack.api.pid}/task/{stack.api.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def _status_kib(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {k: int(v) for k, v in re.findall(r"^(VmHWM|VmRSS):\s+(\d+) kB$", status, re.M)}


def reset_peaks(pids: list[int]) -> dict[int, int]:
    """Reset each process's peak resident size (VmHWM) to its current size, which is
    returned (KiB)."""
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return {pid: _status_kib(pid)["VmHWM"] for pid in pids}


def peak_growth_mib(at_reset: dict[int, int]) -> float:
    """The largest growth of a process's peak resident size since :func:`reset_peaks`."""
    return max(_status_kib(pid)["VmHWM"] - kib for pid, kib in at_reset.items()) / 1024


# --- 1. a zip's member list is bounded before it is read ---------------------------------


def listing_zip(entries: int, declared: int | None = None) -> bytes:
    """One empty stored file, and a central directory of ``entries`` entries all
    pointing at it, ended by zip64 records that declare ``declared`` entries (default:
    the truth). The review's tool: 3 million such entries are a 155 MB upload."""
    name = b"a.wav"
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0)
    entry = struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 45, 20, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0, 0
    )
    directory = (entry + name) * entries
    start = len(local) + len(name)
    count = entries if declared is None else declared
    end64 = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, len(directory), start
    )
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, start + len(directory), 1)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return local + name + directory + end64 + locator + end


@pytest.mark.parametrize(
    ("entries", "declared"),
    [(400_000, None), (250_000, 3)],
    ids=["entries-as-declared", "more-entries-than-declared"],
)
def test_a_zip_listing_a_huge_member_list_is_refused_before_the_list_is_read(
    open_stack: Stack, entries: int, declared: int | None
) -> None:
    # 400,000 entries are a 21 MB upload whose member list took a worker 200+ MB to
    # parse; the second list is shorter than the directory size allowed, but holds far
    # more entries than its end record declares.
    archive = listing_zip(entries, declared)
    at_reset = reset_peaks(worker_pids(open_stack))
    response = requests.post(
        f"{open_stack.url}/api/v1/batches",
        files={"archive": ("listing.zip", archive, "application/zip")},
        timeout=120,
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "archive_too_many_members"
    # The upload itself is spooled to disk; the list is never built.
    growth = peak_growth_mib(at_reset)
    print(f"largest growth of a worker's peak memory: {growth:.1f} MiB")
    assert growth < 64, f"a worker grew by {growth:.0f} MiB"


# --- 3. the upload byte budget charges what is read, and costs a counter -----------------


def multipart(field: str, name: str, data: bytes) -> tuple[bytes, str]:
    from urllib3 import encode_multipart_formdata

    return encode_multipart_formdata({field: (name, data, "audio/mpeg")})


def chunked_upload(url: str, data: bytes) -> requests.Response:
    """A single-job upload with ``Transfer-Encoding: chunked`` (no Content-Length)."""
    body, content_type = multipart("audio", "cough.mp3", data)
    pieces = (body[i : i + 1024] for i in range(0, len(body), 1024))
    return requests.post(
        f"{url}/api/v1/jobs", data=pieces, headers={"Content-Type": content_type}, timeout=60
    )


def test_chunked_uploads_are_charged_the_bytes_they_send(tmp_path: Path, cough_file: Path) -> None:
    """The review: with the limit at 1 MB, twenty uploads got 429 from the 12th with a
    Content-Length, and 202 for all twenty when chunked (each was charged one byte)."""
    audio = cough_file.read_bytes()
    budget = int(len(audio) * 5.5)  # six uploads a minute per counter
    settings = base_settings(tmp_path)
    migrate(settings.database_url)
    stack = Stack(settings, tmp_path, TUSSIS_UPLOAD_BYTES_PER_MINUTE=budget)
    try:
        stack.start_api()
        answers = [chunked_upload(stack.url, audio) for _ in range(18)]
    finally:
        stack.stop()
    statuses = [a.status_code for a in answers]
    print(f"{statuses.count(202)} of {len(statuses)} chunked uploads accepted")
    assert set(statuses) == {202, 429}, statuses
    # Counters are per gunicorn worker on the embedded defaults (two here); the sliding
    # window may let one more through per counter.
    assert statuses.count(202) <= 2 * (budget // len(audio) + 2), statuses
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "bytes" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) >= 1


def test_a_declared_body_size_costs_the_budget_no_memory(open_stack: Stack) -> None:
    """The byte budget was a moving window of one entry per byte: a declared 50 MB body
    cost a worker 400 MB before a byte of it was read (2 GiB, the batch limit, would
    cost 16 GiB)."""
    at_reset = reset_peaks(worker_pids(open_stack))
    for _ in range(2):  # whichever worker takes it
        status, _, _ = exchange(
            open_stack.port,
            b"POST /api/v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\n"
            b"Content-Length: 50000000\r\n\r\n--x\r\n",
        )
        assert status == 400  # the body ended early: a client error
    growth = peak_growth_mib(at_reset)
    print(f"largest growth of a worker's peak memory: {growth:.1f} MiB")
    assert growth < 64, f"a worker grew by {growth:.0f} MiB"


# --- 5, 6. /metrics: bounded labels, and a token compared as bytes ------------------------


def metric_series(stack: Stack) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    response = requests.get(
        f"{stack.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
    )
    assert response.status_code == 200, response.text
    return set(samples(response.text))


def test_made_up_http_methods_add_no_metric_series(open_stack: Stack) -> None:
    """The review: forty requests with made-up methods added 680 series to /metrics,
    with no key; the method was a label, unchecked."""

    def made_up(n: int) -> None:
        for _ in range(n):
            method = "X" + "".join(chr(ord("A") + int(c, 16)) for c in uuid.uuid4().hex[:12])
            head = f"{method} /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            status, _, body = exchange(open_stack.port, head.encode())
            assert status == 404 and b'"error"' in body

    made_up(2)  # the fixed series they count under exist from now on
    before = metric_series(open_stack)
    made_up(40)
    added = metric_series(open_stack) - before
    assert not added, f"{len(added)} series added, such as {sorted(added)[:2]}"


def test_a_non_ascii_metrics_token_is_refused_like_any_wrong_token(open_stack: Stack) -> None:
    """The review: ``Authorization: Bearer \\xe9t\\xe9`` answered 500 (a TypeError in
    hmac.compare_digest, which takes ASCII text only)."""
    for token in (b"\xe9t\xe9", b"scrape-t\xf6ken", b"\xff" * 20):
        status, headers, body = exchange(
            open_stack.port,
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Authorization: Bearer " + token + b"\r\n\r\n",
        )
        assert status == 401, body
        assert b'"unauthorized"' in body and headers["www-authenticate"] == "Bearer"
    metric_series(open_stack)  # the right token still works


# --- 8. open mode answers loopback names only (DNS rebinding) -----------------------------


def test_open_mode_answers_only_loopback_host_names_and_its_own_origin(
    open_stack: Stack, cough_file: Path
) -> None:
    """The review: with no keys, a page on rebind.attacker.example whose name was
    re-pointed at 127.0.0.1 submitted a job (202) and read the listing. The browser
    sends the attacker's name as Host and its page's origin as Origin."""
    url, port = open_stack.url, open_stack.port
    audio = cough_file.read_bytes()
    attacker = {
        "Host": f"rebind.attacker.example:{port}",
        "Origin": "http://rebind.attacker.example",
    }
    for response in (
        requests.post(f"{url}/api/v1/jobs", files={"audio": ("c.mp3", audio)}, headers=attacker),
        requests.get(f"{url}/api/v1/jobs", headers=attacker),
        requests.get(f"{url}/api/v1/jobs", headers={"Host": f"192.0.2.9:{port}"}),
    ):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "host_not_allowed"
    # A page elsewhere posting to the loopback address itself (a cross-site form post).
    forged = requests.post(
        f"{url}/api/v1/jobs",
        files={"audio": ("c.mp3", audio)},
        headers={"Origin": "https://evil.example"},
    )
    assert forged.status_code == 403, forged.text
    assert forged.json()["error"]["code"] == "origin_not_allowed"
    assert requests.get(f"{url}/api/v1/jobs", timeout=10).json()["jobs"] == []
    # Loopback names, and the page's own origin, are served.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}"):
        assert requests.get(f"{url}/api/v1/jobs", headers={"Host": host}).status_code == 200
    own = requests.post(
        f"{url}/api/v1/jobs",
        files={"audio": ("c.mp3", audio)},
        headers={"Origin": f"http://localhost:{port}"},
    )
    assert own.status_code == 202, own.text
    assert requests.get(f"{url}/healthz", headers=attacker).status_code == 200  # no data


# --- 2. slow connections, through the deployment's nginx ---------------------------------


@pytest.fixture(scope="module")
def proxy(open_stack: Stack) -> Iterator[NginxProxy]:
    nginx = NginxProxy(open_stack.port)
    nginx.start()
    yield nginx
    nginx.stop()


def hold_slow_connections(port: int, count: int) -> list[socket.socket]:
    """The review's tool: connections that send half a request and then nothing."""
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        held.append(sock)
    return held


def test_slow_connections_do_not_take_the_api_down_behind_the_proxy(
    proxy: NginxProxy, open_stack: Stack, cough_file: Path
) -> None:
    """The review: two connections that sent 'GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n'
    and never finished made /healthz time out for everyone (two sync workers, published
    directly). Behind nginx, eight such connections cost it eight sockets, not a worker."""
    held = hold_slow_connections(proxy.port, 8)
    try:
        for _ in range(4):  # more requests than gunicorn has workers
            assert requests.get(f"{proxy.url}/healthz", timeout=10).status_code == 200
        audio = cough_file.read_bytes()
        job = requests.post(
            f"{proxy.url}/api/v1/jobs", files={"audio": ("c.mp3", audio)}, timeout=30
        )
        assert job.status_code == 202, job.text
        # A large upload is streamed through (here chunked, so nginx cannot know its size).
        body, content_type = multipart("files", "c.mp3", audio)
        batch = requests.post(
            f"{proxy.url}/api/v1/batches",
            data=iter([body[:100], body[100:]]),
            headers={"Content-Type": content_type},
            timeout=30,
        )
        assert batch.status_code == 202, batch.text
        assert batch.json()["accepted"] == 1
    finally:
        for sock in held:
            sock.close()


def test_the_proxy_answers_its_own_refusals_in_the_error_shape(proxy: NginxProxy) -> None:
    """What nginx refuses itself is JSON in the API's shape, never cached; /metrics is
    not published through it."""
    status, headers, body = exchange(
        proxy.port,
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 50000000\r\n\r\n",
    )
    assert status == 413, body
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert json.loads(body)["error"] == {
        "code": "upload_too_large",
        "message": json.loads(body)["error"]["message"],
        "status": 413,
    }
    for request, refused, code in (
        (b"GARBAGE\r\n\r\n", 400, "bad_request"),  # no request line to read
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n", 400, "bad_request"),
    ):
        status, headers, body = exchange(proxy.port, request, half_close=False)
        assert (status, json.loads(body)["error"]["code"]) == (refused, code), body
        assert json.loads(body)["error"]["status"] == refused
    # The API down (nothing listens where nginx sends requests): 503 with Retry-After.
    nobody = NginxProxy(free_port())
    nobody.start()
    try:
        down = requests.get(f"{nobody.url}/api/v1/jobs", timeout=10)
    finally:
        nobody.stop()
    assert down.status_code == 503 and down.json()["error"]["code"] == "api_unavailable"
    assert down.json()["error"]["status"] == 503 and down.headers["Retry-After"] == "5"
    metrics = requests.get(f"{proxy.url}/metrics", timeout=10)
    assert metrics.status_code == 404 and metrics.json()["error"]["code"] == "not_found"
    # The access log holds the path, never the query string.
    requests.get(f"{proxy.url}/api/v1/jobs?api_key=tus_do-not-log-me", timeout=10)
    wait_until(lambda: "/api/v1/jobs " in proxy.log.read_text(), 10, "the access log line")
    assert "do-not-log-me" not in proxy.log.read_text()
