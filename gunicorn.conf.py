"""gunicorn settings for the API. gunicorn reads ``./gunicorn.conf.py`` by default,
so ``gunicorn 'api:create_app()'`` from the repository root (as ``boot.sh``,
``make run`` and the tests start it) gets these."""

from __future__ import annotations

import os
import sys
from typing import Any

from shared.config import SettingsError, load_settings

# The default address comes from TUSSIS_BIND (127.0.0.1:5000); --bind wins.
bind = load_settings().bind_addresses
accesslog = "-"
# The request path without its query string: a query can carry what must never be
# logged (a key pasted into a URL is refused, but the refusal would still be logged).
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'


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


def post_fork(server: Any, worker: Any) -> None:
    from shared.db import dispose_engines

    dispose_engines()
