"""The folder where a process group's Prometheus metrics meet (``PROMETHEUS_MULTIPROC_DIR``).

gunicorn's workers and Celery's prefork children are separate processes: each
counts into its own files in this folder, and the process that answers a scrape
(any gunicorn worker; the Celery parent) sums them. prometheus_client picks its
file-backed values when it is first imported, so :func:`prepare` runs before
anything imports it: at the top of gunicorn.conf.py and of worker/celery_app.py.

An operator may set ``PROMETHEUS_MULTIPROC_DIR`` (one folder per API or per worker,
never shared between them); it is emptied at start, as prometheus_client's
documentation asks, since files of an earlier run would be summed in. Otherwise a
fresh temporary folder is made and removed when the process that made it exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_prepared: Path | None = None


def prepare(purpose: str) -> Path:
    """Make (or empty) the folder and point ``PROMETHEUS_MULTIPROC_DIR`` at it; once
    per process (gunicorn re-reads its config on HUP while its workers still count)."""
    global _prepared
    if _prepared is not None:
        return _prepared
    given = os.environ.get(VARIABLE)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix=f"tussis-{purpose}-metrics-"))
        os.environ[VARIABLE] = str(path)
        creator = os.getpid()

        def remove() -> None:
            # Forked children inherit this hook: only the creator removes the folder.
            if os.getpid() == creator:
                shutil.rmtree(path, ignore_errors=True)

        atexit.register(remove)
    _prepared = path
    return path
