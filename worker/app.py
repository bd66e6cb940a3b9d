"""The worker's Celery application."""

from __future__ import annotations

from shared.config import load_settings
from shared.queue import make_celery

settings = load_settings()
celery = make_celery(settings)

# Registered for their side effects: task definitions and process signals.
from worker import lifecycle, tasks  # noqa: E402, F401
