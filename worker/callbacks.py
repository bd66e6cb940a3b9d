"""A batch's completion callback: the signed JSON body, and one delivery attempt.

Safety rules (see docs/batches.md#callback):

- the URL's host is resolved and checked by ``shared.netguard`` before each attempt,
  and the connected socket's peer is checked again (DNS rebinding); a refused
  address fails the callback at once;
- redirects are never followed: a 3xx is a failed attempt, only a 2xx delivers;
- the body is signed per Standard Webhooks (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``) so receivers can reject replays, and with the older
  ``X-Tussis-Signature`` beside it;
- logs show ``scheme://host:port/path`` only, never the query or userinfo.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import socket
from collections.abc import Iterable
from datetime import datetime, timedelta

import requests
from requests.adapters import HTTPAdapter
from standardwebhooks.webhooks import Webhook
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from shared import batches, netguard
from shared.config import Settings
from shared.tables import Batch, utcnow
from worker.runtime import Runtime

log = logging.getLogger("tussis.worker")

CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 5.0, 10.0
# While an attempt is in flight its due time is this far ahead, so a duplicate
# message cannot start a second one (well above DNS + connect + read timeouts).
CLAIM_LEASE_S = 120.0
# A retry may run this much before its planned time (clocks of workers differ).
CLAIM_EARLY_S = 30.0
BACKOFF_CAP_S = 300.0
WHSEC_PREFIX = "whsec_"


def callback_body(batch: Batch, counts: batches.Counts) -> bytes:
    return json.dumps(
        {
            "batch_id": batch.id,
            "status": batch.status,
            "total": counts.total,
            "counts": counts.as_dict(),
            "finished_at": batch.finished_at.isoformat().replace("+00:00", "Z")
            if batch.finished_at
            else None,
        },
        separators=(",", ":"),
    ).encode()


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_secret(secret: str) -> str:
    """The Standard Webhooks form of TUSSIS_CALLBACK_SECRET: a ``whsec_`` secret as is,
    any other ``whsec_`` + base64(its UTF-8 bytes), which is what receivers configure."""
    if secret.startswith(WHSEC_PREFIX):
        return secret
    return WHSEC_PREFIX + base64.b64encode(secret.encode()).decode()


def message_id(batch_id: str) -> str:
    """The same for every attempt of one callback, so receivers can de-duplicate."""
    return f"batch_{batch_id}"


def signed_headers(secret: str, batch_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """Standard Webhooks headers (the timestamp is the send time) and X-Tussis-Signature.
    ValueError if a ``whsec_`` secret is not valid base64."""
    msg_id = message_id(batch_id)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(webhook_secret(secret)).sign(msg_id, now, body.decode()),
        "X-Tussis-Signature": signature(secret, body),
    }


def retry_delay(attempts: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: exponential with
    full jitter (so callbacks failing together do not retry together), capped at 300 s
    and at a quarter of the broker's visibility timeout (a delayed message held longer
    than that is redelivered by Redis)."""
    cap = min(BACKOFF_CAP_S, settings.visibility_timeout_s / 4)
    ceiling = min(cap, 2.0 ** min(attempts, 30))
    return max(1.0, (rng or random).uniform(0, ceiling))


def _guarded(base: type[HTTPConnection], allowed: tuple[netguard.Network, ...]) -> type:
    """``base`` refusing to talk to a peer netguard refuses: the address actually
    connected to, whatever DNS answered after the check before the attempt."""

    class Guarded(base):  # type: ignore[valid-type,misc]
        def _new_conn(self) -> socket.socket:
            sock: socket.socket = super()._new_conn()
            try:
                netguard.check_address(str(sock.getpeername()[0]), allowed)
            except BaseException:
                sock.close()
                raise
            return sock

    return Guarded


def guarded_session(allowed: Iterable[netguard.Network]) -> requests.Session:
    """A requests session whose every connection is checked by netguard, without
    environment proxies or .netrc credentials (trust_env off)."""
    networks = tuple(allowed)

    class Pool(HTTPConnectionPool):
        ConnectionCls = _guarded(HTTPConnection, networks)

    class TlsPool(HTTPSConnectionPool):
        ConnectionCls = _guarded(HTTPSConnection, networks)

    adapter = HTTPAdapter(max_retries=0)
    adapter.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": TlsPool}
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _reason(exc: BaseException) -> str:
    """A failure in words without the URL (requests' messages quote it, query and all)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.strerror:
            return f"{type(exc).__name__}: {cause.strerror}"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _post(url: str, body: bytes, headers: dict[str, str], settings: Settings) -> str | None:
    """One POST; None when delivered (2xx), else why not. CallbackUrlError when the
    connected address is refused."""
    with guarded_session(settings.callback_allowed_networks) as session:
        try:
            response = session.post(
                url,
                data=body,
                headers=headers,
                timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                allow_redirects=False,
                stream=True,  # the receiver's body is of no interest
            )
        except requests.RequestException as exc:
            return _reason(exc)
        with response:
            status = response.status_code
    if 200 <= status < 300:
        return None
    if 300 <= status < 400:
        # Following would send the notice (or, for 301-303, a body-less GET) to a URL
        # nobody checked; and the receiver did not get it, so it is not delivered.
        return f"redirect not followed (HTTP {status})"
    return f"HTTP {status}"


def deliver(rt: Runtime, batch_id: str) -> float | None:
    """Try once. Returns ``None`` when nothing more is to be done (delivered, given up,
    nothing pending, or another attempt owns the callback), else the seconds until
    the retry, whose planned time is already recorded on the batch."""
    settings = rt.settings
    with rt.session() as session:
        batch = session.get(Batch, batch_id)
        if batch is None or batch.callback_state != batches.CALLBACK_PENDING:
            return None
        if not batches.claim_callback(session, batch_id, CLAIM_LEASE_S, CLAIM_EARLY_S):
            log.info("batch %s: another callback attempt is in flight or due later", batch_id)
            return None
        body = callback_body(batch, batches.counts(session, batch_id))
        url, attempts = batch.callback_url, batch.callback_attempts
    assert url is not None
    where = netguard.loggable(url)

    failure: str | None
    try:
        netguard.check_url(url, settings.callback_allowed_networks)
        failure = _send(rt, batch_id, url, body)
    except netguard.CallbackUrlError as exc:
        if exc.code != netguard.HOST_UNRESOLVABLE:
            # Not a passing fault: retrying would knock on the same internal door.
            with rt.session() as session:
                batches.record_callback(session, batch_id, batches.CALLBACK_FAILED)
            log.error("batch %s: callback to %s refused: %s", batch_id, where, exc.message)
            return None
        failure = "the host does not resolve"

    if failure is None:
        with rt.session() as session:
            batches.record_callback(session, batch_id, batches.CALLBACK_DELIVERED)
        log.info("batch %s: callback delivered to %s", batch_id, where)
        return None
    attempts += 1
    log.warning(
        "batch %s: callback attempt %d to %s failed: %s", batch_id, attempts, where, failure
    )
    if attempts >= settings.callback_max_attempts:
        with rt.session() as session:
            batches.record_callback(session, batch_id, batches.CALLBACK_FAILED)
        log.error("batch %s: giving up on the callback after %d attempts", batch_id, attempts)
        return None
    delay = retry_delay(attempts, settings)
    with rt.session() as session:
        batches.record_callback(
            session, batch_id, batches.CALLBACK_PENDING, utcnow() + timedelta(seconds=delay)
        )
    return delay


def _send(rt: Runtime, batch_id: str, url: str, body: bytes) -> str | None:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "tussis-callback/1",
        "X-Tussis-Batch": batch_id,
    }
    secret = rt.settings.callback_secret.get_secret_value()
    if secret:
        try:
            headers.update(signed_headers(secret, batch_id, body, utcnow()))
        except ValueError:
            return "TUSSIS_CALLBACK_SECRET starts with 'whsec_' but is not valid base64"
    else:
        log.warning(
            "batch %s: TUSSIS_CALLBACK_SECRET is not set; the callback is unsigned", batch_id
        )
    return _post(url, body, headers, rt.settings)
