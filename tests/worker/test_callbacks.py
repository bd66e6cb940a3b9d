"""Batch completion callbacks are safe to send: internal addresses refused at submission
and at delivery, redirects never followed, Standard Webhooks signatures receivers can
verify (and replays they can refuse), and retries whose message was lost picked up
again. Real HTTP receivers on 127.0.0.1, real SQL (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from standardwebhooks import Webhook, WebhookVerificationError

from api import create_app
from shared import batches, netguard
from shared.config import Settings
from shared.tables import Batch, BatchStatus, utcnow
from tests.api.conftest import assert_error
from tests.api.test_batches import post_files
from tests.conftest import base_settings, configure, require
from worker import callbacks
from worker.runtime import Runtime

LOCAL = (ipaddress.ip_network("127.0.0.1/32"),)
SECRET = "s3cret"


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request, whatever its method."""

    def __init__(
        self,
        statuses: list[int] | None = None,
        location: str | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.statuses = list(statuses or [204])
        self.location = location
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append((self.command, self.path, dict(self.headers), body))
                status = outer.statuses.pop(0) if len(outer.statuses) > 1 else outer.statuses[0]
                self.send_response(status)
                if outer.location:
                    self.send_header("Location", outer.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = do_HEAD = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer((host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    """Receivers a test starts (append to this list), all shut down afterwards."""
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.close()


def start(started: list[Receiver], *args: object, **kwargs: object) -> Receiver:
    receiver = Receiver(*args, **kwargs)  # type: ignore[arg-type]
    started.append(receiver)
    return receiver


def completed_batch(
    rt: Runtime,
    url: str,
    attempts: int = 0,
    next_attempt_at: datetime | None = None,
    state: str = batches.CALLBACK_PENDING,
) -> str:
    """A completed batch whose callback is due, as ``complete_if_done`` leaves it."""
    with rt.session() as session:
        batch = batches.create(session, "owner", url)
        batch.status = BatchStatus.COMPLETED
        batch.finished_at = utcnow() - timedelta(hours=2)
        batch.callback_state = state
        batch.callback_attempts = attempts
        batch.callback_next_attempt_at = next_attempt_at
        batch_id = batch.id
    return batch_id


def row(rt: Runtime, batch_id: str) -> Batch:
    with rt.session() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        session.expunge(batch)
        return batch


def api_client(settings: Settings, **changes: object) -> FlaskClient:
    app = create_app(configure(settings, api_keys={"k-owner": "owner"}, **changes))
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer k-owner"
    return client


# --- submission ---------------------------------------------------------------------

INTERNAL = {
    "127.0.0.1": "http://127.0.0.1/hook",
    "10.0.0.1": "http://10.0.0.1/hook",
    "172.16.0.1": "http://172.16.0.1/hook",
    "192.168.1.1": "https://192.168.1.1/hook",
    "169.254.169.254": "http://169.254.169.254/latest/meta-data/",
    "[::1]": "http://[::1]:8080/hook",
    "[fe80::1]": "http://[fe80::1]/hook",
    "localhost:6379": "http://localhost:6379/",
    "0x7f000001": "http://0x7f000001/hook",
    "2130706433": "http://2130706433/hook",
    "127.1": "http://127.1/hook",
    "[::ffff:127.0.0.1]": "http://[::ffff:127.0.0.1]/hook",
    "0.0.0.0": "http://0.0.0.0:8000/hook",
    "100.64.0.1": "http://100.64.0.1/hook",
}


@pytest.mark.parametrize("url", INTERNAL.values(), ids=INTERNAL.keys())
def test_submission_refuses_a_callback_to_an_internal_address(
    settings: Settings, cough_file: Path, url: str
) -> None:
    client = api_client(settings)
    response = post_files(client, [("a.mp3", cough_file.read_bytes())], callback_url=url)
    assert_error(response, 400, "callback_address_not_allowed")
    with Runtime(settings).session() as session:
        # The services database is shared by the session's tests: count this URL only.
        stored = select(func.count()).select_from(Batch).where(Batch.callback_url == url)
        assert session.scalar(stored) == 0


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://user:pass@example.org/hook", "callback_credentials_not_allowed"),
        ("http://token@example.org/hook", "callback_credentials_not_allowed"),
        ("ftp://example.org/hook", "invalid_callback_url"),
        ("http:///hook", "invalid_callback_url"),
        ("http://no-such-host.invalid/hook", "callback_host_unresolvable"),
    ],
    ids=["user-pass", "user", "ftp", "no-host", "unresolvable"],
)
def test_submission_refuses_credentials_malformed_urls_and_unknown_hosts(
    settings: Settings, cough_file: Path, url: str, code: str
) -> None:
    client = api_client(settings)
    response = post_files(client, [("a.mp3", cough_file.read_bytes())], callback_url=url)
    assert_error(response, 400, code)


def test_submission_accepts_an_internal_address_in_the_allow_list(
    settings: Settings, cough_file: Path
) -> None:
    client = api_client(settings, callback_allowed_networks=LOCAL)
    url = "http://127.0.0.1:9/hook"
    response = post_files(client, [("a.mp3", cough_file.read_bytes())], callback_url=url)
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["callback"]["url"] == url


def own_address() -> ipaddress.IPv4Address:
    """This host's address towards the outside: the source the kernel picks for a
    packet to TEST-NET-3 (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("203.0.113.1", 9))
        except OSError:
            require(False, "this host has no route outside loopback")
        address = ipaddress.IPv4Address(sock.getsockname()[0])
    require(not address.is_loopback, "this host has no address outside loopback")
    return address


def test_the_hosts_own_addresses_are_refused_even_inside_an_allowed_network(
    settings: Settings, cough_file: Path, receivers: list[Receiver]
) -> None:
    """The review: the guard allowed the host's own public address on any port, so a
    callback could reach a service of the worker's host that listens on every
    interface (Redis, the worker's metrics port). Here a service listens on all
    interfaces, and the operator allowed the private network around the host's own
    address for their receivers: that must not open the host itself."""
    own = own_address()
    service = start(receivers, host="0.0.0.0")
    url = f"http://{own}:{service.server.server_port}/hook"
    network = (ipaddress.ip_network(f"{own}/24", strict=False),)

    refused = post_files(
        api_client(settings, callback_allowed_networks=network),
        [("a.mp3", cough_file.read_bytes())],
        callback_url=url,
    )
    assert_error(refused, 400, "callback_address_not_allowed")
    assert "this host's own address" in refused.get_json()["error"]["message"]
    # Not in any allow-list: named as the host's own (a public one would be caught here).
    unlisted = post_files(
        api_client(settings), [("a.mp3", cough_file.read_bytes())], callback_url=url
    )
    assert "this host's own address" in unlisted.get_json()["error"]["message"]

    # At delivery (and on the connected socket) the same.
    rt = Runtime(configure(settings, callback_allowed_networks=network, callback_secret=SECRET))
    batch_id = completed_batch(rt, url)
    assert callbacks.deliver(rt, batch_id) is None
    assert row(rt, batch_id).callback_state == batches.CALLBACK_FAILED
    with callbacks.guarded_session(network) as session, pytest.raises(netguard.CallbackUrlError):
        session.post(url, data=b"{}", timeout=5, allow_redirects=False)
    assert service.requests == []

    # Named by itself, the address is the operator's explicit choice.
    exact = (ipaddress.ip_network(f"{own}/32"),)
    accepted = post_files(
        api_client(settings, callback_allowed_networks=exact),
        [("a.mp3", cough_file.read_bytes())],
        callback_url=url,
    )
    assert accepted.status_code == 202, accepted.get_data(as_text=True)
    with callbacks.guarded_session(exact) as session:
        assert session.post(url, data=b"{}", timeout=5).status_code == 204
    assert len(service.requests) == 1


# --- delivery -----------------------------------------------------------------------


def test_delivery_fails_at_once_when_the_address_is_no_longer_allowed(
    settings: Settings, cough_file: Path, receivers: list[Receiver]
) -> None:
    receiver = start(receivers)
    allowing = api_client(settings, callback_allowed_networks=LOCAL)
    response = post_files(
        allowing, [("a.mp3", cough_file.read_bytes())], callback_url=receiver.url, open="true"
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    batch_id = response.get_json()["id"]
    # The operator has since removed the allow-list; the batch completes.
    rt = Runtime(configure(settings, callback_allowed_networks=(), callback_secret=SECRET))
    with rt.session() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        batch.status, batch.finished_at = BatchStatus.COMPLETED, utcnow()
        batch.callback_state = batches.CALLBACK_PENDING

    assert callbacks.deliver(rt, batch_id) is None  # no retry
    after = row(rt, batch_id)
    assert after.callback_state == batches.CALLBACK_FAILED and after.callback_attempts == 1
    assert receiver.requests == []


def test_the_connected_address_is_checked_whatever_dns_said_before(
    receivers: list[Receiver],
) -> None:
    """DNS rebinding: even a URL that passed the check cannot connect to a refused peer."""
    receiver = start(receivers)
    with (
        callbacks.guarded_session(()) as session,
        pytest.raises(netguard.CallbackUrlError) as refused,
    ):
        session.post(receiver.url, data=b"{}", timeout=5, allow_redirects=False)
    assert refused.value.code == netguard.ADDRESS_NOT_ALLOWED
    assert receiver.requests == []
    with callbacks.guarded_session(LOCAL) as session:
        assert session.post(receiver.url, data=b"{}", timeout=5).status_code == 204
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_failed_attempt_and_is_never_followed(
    settings: Settings, receivers: list[Receiver], caplog: pytest.LogCaptureFixture, status: int
) -> None:
    target = start(receivers)
    redirecting = start(receivers, [status], location=target.url)
    rt = Runtime(configure(settings, callback_allowed_networks=LOCAL, callback_secret=SECRET))
    url = redirecting.url + "?token=do-not-log-me"
    batch_id = completed_batch(rt, url)

    with caplog.at_level(logging.INFO, logger="tussis.worker"):
        delay = callbacks.deliver(rt, batch_id)

    assert delay is not None and delay >= 1  # retried later, not delivered
    after = row(rt, batch_id)
    assert after.callback_state == batches.CALLBACK_PENDING and after.callback_attempts == 1
    assert after.callback_next_attempt_at is not None
    assert after.callback_next_attempt_at > utcnow()
    assert [(m, p) for m, p, _, _ in redirecting.requests] == [
        ("POST", "/hook?token=do-not-log-me")
    ]
    assert target.requests == []
    assert "redirect not followed" in caplog.text
    assert "do-not-log-me" not in caplog.text


def test_a_redirect_on_the_last_attempt_fails_the_callback(
    settings: Settings, receivers: list[Receiver]
) -> None:
    target = start(receivers)
    redirecting = start(receivers, [302], location=target.url)
    rt = Runtime(configure(settings, callback_allowed_networks=LOCAL, callback_max_attempts=3))
    batch_id = completed_batch(rt, redirecting.url, attempts=2)
    assert callbacks.deliver(rt, batch_id) is None
    assert row(rt, batch_id).callback_state == batches.CALLBACK_FAILED
    assert target.requests == []


@pytest.mark.parametrize(
    "secret", [SECRET, "whsec_" + base64.b64encode(b"0123456789abcdef0123").decode()]
)
def test_a_2xx_delivers_a_notice_receivers_verify_with_standard_webhooks(
    settings: Settings, receivers: list[Receiver], secret: str
) -> None:
    receiver = start(receivers, [503, 204])
    rt = Runtime(configure(settings, callback_allowed_networks=LOCAL, callback_secret=secret))
    batch_id = completed_batch(rt, receiver.url)

    assert callbacks.deliver(rt, batch_id) is not None  # 503: retry
    assert callbacks.deliver(rt, batch_id) is None  # 204: delivered
    after = row(rt, batch_id)
    assert after.callback_state == batches.CALLBACK_DELIVERED and after.callback_attempts == 2
    assert after.callback_next_attempt_at is None

    (_, _, first, _), (method, _, headers, body) = receiver.requests
    assert method == "POST"
    # What a receiver configures: the whsec_ secret as is, else whsec_ + base64(secret).
    receiver_secret = (
        secret
        if secret.startswith("whsec_")
        else ("whsec_" + base64.b64encode(secret.encode()).decode())
    )
    notice = Webhook(receiver_secret).verify(body, headers)
    assert notice["batch_id"] == batch_id and notice["status"] == "completed"
    # One message id for every attempt, so receivers can de-duplicate.
    assert headers["webhook-id"] == first["webhook-id"] == f"batch_{batch_id}"
    assert abs(int(headers["webhook-timestamp"]) - utcnow().timestamp()) < 60
    # Existing receivers keep working.
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Tussis-Signature"] == expected

    # A captured notice replayed later: its timestamp is signed, and too old.
    with pytest.raises(WebhookVerificationError, match="too old"):
        old = callbacks.signed_headers(secret, batch_id, body, utcnow() - timedelta(minutes=6))
        Webhook(receiver_secret).verify(body, old)
    # ... and it cannot be freshened: the signature covers the timestamp.
    refreshed = {**headers, "webhook-timestamp": str(int(utcnow().timestamp()) + 1)}
    with pytest.raises(WebhookVerificationError):
        Webhook(receiver_secret).verify(body, refreshed)
    with pytest.raises(WebhookVerificationError):
        Webhook(receiver_secret).verify(body.replace(b"completed", b"failed"), headers)


def test_an_attempt_in_flight_keeps_a_duplicate_message_from_sending(
    settings: Settings, receivers: list[Receiver]
) -> None:
    receiver = start(receivers)
    rt = Runtime(configure(settings, callback_allowed_networks=LOCAL))
    batch_id = completed_batch(rt, receiver.url)
    with rt.session() as session:  # another worker's attempt has claimed it
        assert batches.claim_callback(session, batch_id, lease_s=120, early_s=30)
    with rt.session() as session:  # and only one claim wins
        assert not batches.claim_callback(session, batch_id, lease_s=120, early_s=30)
    assert callbacks.deliver(rt, batch_id) is None
    assert receiver.requests == []
    assert row(rt, batch_id).callback_state == batches.CALLBACK_PENDING


def test_a_host_that_stops_resolving_is_retried(settings: Settings) -> None:
    rt = Runtime(settings)
    batch_id = completed_batch(rt, "http://no-such-host.invalid/hook")
    assert callbacks.deliver(rt, batch_id) is not None
    after = row(rt, batch_id)
    assert after.callback_state == batches.CALLBACK_PENDING and after.callback_attempts == 1


# --- retries --------------------------------------------------------------------------


def test_a_lost_retry_is_found_by_the_sweeper_query_and_then_delivered(
    settings: Settings, receivers: list[Receiver]
) -> None:
    receiver = start(receivers)
    rt = Runtime(configure(settings, callback_allowed_networks=LOCAL))
    long_ago = utcnow() - timedelta(hours=1)
    lost = completed_batch(rt, receiver.url, attempts=2, next_attempt_at=long_ago)
    never_sent = completed_batch(rt, receiver.url)
    due_later = completed_batch(rt, receiver.url, 2, utcnow() + timedelta(minutes=5))
    recently_due = completed_batch(rt, receiver.url, 2, utcnow() - timedelta(seconds=10))
    delivered = completed_batch(rt, receiver.url, 1, None, batches.CALLBACK_DELIVERED)
    with rt.session() as session:
        found = set(batches.lost_callbacks(session, older_than_s=600))
    assert {lost, never_sent} <= found
    assert not found & {due_later, recently_due, delivered}

    assert callbacks.deliver(rt, lost) is None  # what the sweeper's re-queued task does
    after = row(rt, lost)
    assert after.callback_state == batches.CALLBACK_DELIVERED and after.callback_attempts == 3


def test_retry_delays_are_jittered_and_capped(tmp_path: Path) -> None:
    import random

    rng = random.Random(7)
    settings = base_settings(tmp_path)
    tight = base_settings(tmp_path, visibility_timeout_s=400)
    for attempts in range(1, 40):
        delays = {callbacks.retry_delay(attempts, settings, rng) for _ in range(20)}
        assert all(1 <= d <= min(300, 2**attempts) for d in delays)
        if attempts >= 3:
            assert len(delays) > 10  # jittered, not in lockstep
        assert all(callbacks.retry_delay(attempts, tight, rng) <= 100 for _ in range(20))
