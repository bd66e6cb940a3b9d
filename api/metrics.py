"""``GET /metrics``: the API's Prometheus metrics, and the hooks that count them.

Under gunicorn every worker process counts into files in ``PROMETHEUS_MULTIPROC_DIR``
(gunicorn.conf.py makes a fresh one and marks dead workers), and a scrape sums them,
so one scrape sees the whole API whichever worker answers. Without that variable
(``flask run``, the tests' in-process app) the process's own registry is served.

Labels are bounded, whatever a client sends: the route is the URL rule
(``/api/v1/jobs/<job_id>``), never the raw path, a request no rule matched counts as
``unmatched``, a method outside HTTP's usual ones as ``other``; no label holds an
owner, a key or a job id. Job outcomes are counted
by the worker (worker/metrics.py): the API never sees a job finish.

``/metrics`` is outside ``/api/``: no API key and no rate limit, so Prometheus can
scrape it. It tells counts, not data, but keep it off the public network, or set
``TUSSIS_METRICS_TOKEN`` to require ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import logging
import os
import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from api import guards
from api.auth import bind_owner
from api.errors import error_response
from shared import logs

log = logging.getLogger("tussis.api")

bp = Blueprint("metrics", __name__)

HTTP_REQUESTS = Counter(
    "tussis_http_requests_total",
    "HTTP requests answered by the API, by route (URL rule), method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "tussis_http_request_duration_seconds",
    "Time from the request reaching the app to its answer, by route and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
UPLOADS = Counter(
    "tussis_uploads_total",
    "Upload requests (a single job, a new batch, files added to a batch), by kind and status.",
    ["kind", "status"],
)
UPLOAD_BYTES = Counter(
    "tussis_upload_bytes_total",
    "Request body bytes read by the upload routes (chunked bodies too), by kind.",
    ["kind"],
)
JOBS_SUBMITTED = Counter(
    "tussis_jobs_submitted_total",
    "Jobs accepted and queued: `single` (POST /api/v1/jobs) or `batch_item` (a file of a "
    "batch). Idempotent replays are not counted again.",
    ["kind"],
)

LONG_POLL_WAITERS = Gauge(
    "tussis_long_poll_waiters",
    "Requests holding a long poll (`Prefer: wait`) now, summed over the API processes.",
    multiprocess_mode="livesum",
)

# The upload routes (URL rules) and the kind each counts as.
UPLOAD_ROUTES = {
    "/api/v1/jobs": "single",
    "/api/v1/batches": "batch",
    "/api/v1/batches/<batch_id>/items": "batch",
}
UNMATCHED = "unmatched"  # a 404 with no rule: one label value, not one per probed path
# Methods counted under their own name; any other (a client may send any token) is one
# label value, not one series per made-up method.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED


def _method() -> str:
    return request.method if request.method in KNOWN_METHODS else OTHER_METHOD


def _start() -> None:
    g.tussis_started = time.perf_counter()
    # The log context of this request: what the URL names (the owner is known
    # once the key is checked, and the new job's id once it is stored).
    args = request.view_args or {}
    g.tussis_log_tokens = logs.bind(job_id=args.get("job_id"), batch_id=args.get("batch_id"))


def _count(response: Response) -> Response:
    started = g.pop("tussis_started", None)
    route, method, status = _route(), _method(), response.status_code
    if route == "/metrics":
        return response  # Prometheus's own scrapes would outnumber everything else
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    if started is not None:
        HTTP_LATENCY.labels(route, method).observe(time.perf_counter() - started)
    kind = UPLOAD_ROUTES.get(route)
    if kind is None or method != "POST":
        return response
    UPLOADS.labels(kind, str(status)).inc()
    UPLOAD_BYTES.labels(kind).inc(guards.body_bytes_read())
    if status != 202 or not response.is_json:
        return response  # refused, or a replay (200) of an earlier submission
    body = response.get_json(silent=True) or {}
    caller = g.get("tussis_caller")
    owner = getattr(caller, "owner", None)
    if kind == "single":
        JOBS_SUBMITTED.labels("single").inc()
        with logs.bound(job_id=body.get("id"), batch_id=body.get("batch_id"), owner=owner):
            log.info("job %s queued", body.get("id"))
    else:
        accepted = int(body.get("accepted") or 0)
        JOBS_SUBMITTED.labels("batch_item").inc(accepted)
        with logs.bound(batch_id=body.get("id"), owner=owner):
            log.info("batch %s: %d item(s) queued", body.get("id"), accepted)
    return response


def _end(_: BaseException | None) -> None:
    tokens = g.pop("tussis_log_tokens", None)
    if tokens:
        logs.unbind(tokens)


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


@bp.get("/metrics")
def metrics() -> Response:
    token = current_app.extensions["tussis.settings"].metrics_token.get_secret_value()
    if token:
        scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
        # Compared as bytes, as api/auth.py does with keys: compare_digest refuses text
        # that is not ASCII with a TypeError, and a header may carry any Latin-1 byte.
        sent_bytes = sent.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(sent_bytes, token.encode()):
            return error_response(
                401,
                "unauthorized",
                "Send the metrics token as 'Authorization: Bearer <token>'.",
                {"WWW-Authenticate": "Bearer"},
            )
    response = Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


def _bind_owner() -> None:
    caller = g.get("tussis_caller")
    if caller is not None and caller.owner is not None:  # a poll binds it after its read
        bind_owner(caller.owner)


def init_app(app: Flask) -> None:
    """Before the other hooks, so that requests they refuse are timed too."""
    app.extensions["tussis.waiters"].on_count = LONG_POLL_WAITERS.set
    app.before_request(_start)
    app.after_request(_count)
    app.teardown_request(_end)
    app.register_blueprint(bp)


def init_caller_context(app: Flask) -> None:
    """After authentication: the rest of the request's log lines name the owner."""
    app.before_request(_bind_owner)
