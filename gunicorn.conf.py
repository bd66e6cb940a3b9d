"""gunicorn settings for the API. gunicorn reads ``./gunicorn.conf.py`` by default,
so ``gunicorn 'api:create_app()'`` from the repository root (as ``boot.sh``,
``make run`` and the tests start it) gets these."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import gunicorn.util

from shared import logs, prometheus_dir
from shared.config import SettingsError, load_settings

# Before the app (and so prometheus_client) is imported: the workers count into files
# there, and /metrics sums them (api/metrics.py).
prometheus_dir.prepare("api")

_settings = load_settings()
# The default address comes from TUSSIS_BIND (127.0.0.1:5000); --bind wins.
bind = _settings.bind_addresses
# Threads, not an async worker: the app is ordinary blocking Flask, SQLAlchemy and
# psycopg code, which gevent would have to monkey-patch and which an async worker would
# serve one request at a time. A long poll (Prefer: wait) holds a thread while it waits,
# on an event, without a database connection; one notification listener per process
# wakes them (api/waiting.py). 500 waiters on a 2-core machine leave /healthz's p99
# within target (docs/performance.md, "Long polls").
worker_class = "gthread"
threads = _settings.api_threads
accesslog = "-"
# gunicorn's own lines and its access lines in the app's format (TUSSIS_LOG_FORMAT).
logconfig_dict = logs.dict_config(_settings.log_format, _settings.log_level)
# The request path without its query string: a query can carry what must never be
# logged (a key pasted into a URL is refused, but the refusal would still be logged).
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'

# Request line and header limits. The request line is at gunicorn's maximum (its
# default, 4094, refused URLs the app accepts); the app itself refuses targets over
# 8000 bytes and headers past these limits (api/guards.py), so most refusals come from
# the app. What gunicorn still refuses, it answers in the API's JSON shape (below).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# gunicorn's own refusals (a request it cannot parse, or over the limits above), as the
# API's codes. It never sees the app, so it has no other way to answer in JSON.
_GUNICORN_ERRORS = {
    400: ("bad_request", "The request is not valid HTTP."),
    403: ("forbidden", "The request is not allowed."),
    414: (
        "uri_too_long",
        "The request line is longer than 8190 bytes; send long values in the body.",
    ),
    417: ("expectation_failed", "The Expect header is not supported."),
    431: (
        "headers_too_large",
        "The request has more than 100 headers, or one longer than 8190 bytes.",
    ),
    500: ("internal_error", "An unexpected error occurred on the server."),
    501: ("not_implemented", "The request uses a transfer coding the server does not support."),
}


def _write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """Replaces ``gunicorn.util.write_error`` (an HTML page): the same status, in the API's
    error shape. ``mesg`` may echo the client's bytes, so it is not repeated."""
    code, message = _GUNICORN_ERRORS.get(status_int, ("http_error", f"{reason}."))
    body = json.dumps({"error": {"code": code, "message": message, "status": status_int}})
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "Cache-Control: no-store\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, (head + body).encode("latin-1"))


# gunicorn's workers look the function up on the module at each error; the workers are
# forked from this process, so they inherit the replacement.
gunicorn.util.write_error = _write_json_error


def on_starting(server: Any) -> None:
    """Refuse to start an open API on a non-loopback address, before listening."""
    # The worker processes read the real addresses from here, whatever set them.
    os.environ["TUSSIS_BIND"] = ",".join(server.cfg.bind)
    from api.auth import check_can_start

    try:
        mode = check_can_start(load_settings())
    except SettingsError as exc:
        print(f"tussis api: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        # The check may have opened database connections in this (master) process;
        # forked workers must never share them.
        from shared.db import close_engines

        close_engines()
    server.log.info("tussis api: %s", mode)


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges no longer count (its counters and histograms do)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_fork(server: Any, worker: Any) -> None:
    from shared.db import dispose_engines

    dispose_engines()
