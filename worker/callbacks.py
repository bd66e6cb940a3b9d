"""A batch's completion callback: the signed JSON body, and one delivery attempt."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import urllib.request

from shared import batches
from shared.tables import Batch
from worker.runtime import Runtime

log = logging.getLogger("tussis.worker")


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


def deliver(rt: Runtime, batch_id: str) -> int | None:
    """Try once. Returns ``None`` when nothing more is to be done (delivered, given
    up, or nothing pending), else the attempts so far, for the caller's backoff."""
    settings = rt.settings
    with rt.session() as session:
        batch = session.get(Batch, batch_id)
        if batch is None or batch.callback_state != batches.CALLBACK_PENDING:
            return None
        body = callback_body(batch, batches.counts(session, batch_id))
        url, attempts = batch.callback_url, batch.callback_attempts
    assert url is not None
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "tussis-callback/1",
        "X-Tussis-Batch": batch_id,
    }
    secret = settings.callback_secret.get_secret_value()
    if secret:
        headers["X-Tussis-Signature"] = signature(secret, body)
    else:
        log.warning(
            "batch %s: TUSSIS_CALLBACK_SECRET is not set; the callback is unsigned", batch_id
        )
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            ok = 200 <= response.status < 300
    except Exception as exc:
        log.warning("batch %s: callback to %s failed (%s)", batch_id, url, exc)
        ok = False
    if ok:
        with rt.session() as session:
            batches.record_callback(session, batch_id, batches.CALLBACK_DELIVERED)
        return None
    attempts += 1
    if attempts >= settings.callback_max_attempts:
        with rt.session() as session:
            batches.record_callback(session, batch_id, batches.CALLBACK_FAILED)
        log.error("batch %s: giving up on the callback after %d attempts", batch_id, attempts)
        return None
    with rt.session() as session:
        batches.record_callback(session, batch_id, batches.CALLBACK_PENDING)
    return attempts
