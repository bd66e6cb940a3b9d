"""The worker's Celery application: the one entry module (``celery -A worker.celery_app``).

It reads the settings, builds the app, connects the process signals and
registers the tasks. Nothing imports this module (an import-linter contract
says so); tasks are ``shared_task``\\ s and reach the app through ``self.app``.
"""

from __future__ import annotations

from celery.signals import setup_logging, task_failure, worker_init, worker_process_init

from shared.config import load_settings
from shared.queue import make_celery
from worker import lifecycle, runtime, tasks

settings = load_settings()
runtime.configure(settings)
celery = make_celery(settings)
# worker.tasks defines shared tasks: importing it (above) attaches them to this app.
__all__ = ["celery", "tasks"]

setup_logging.connect(lifecycle.configure_logging, weak=False)
worker_init.connect(lifecycle.check_bundles, weak=False)
worker_process_init.connect(lifecycle.init_child, weak=False)
task_failure.connect(lifecycle.on_task_failure, weak=False)
# Before the consumer connects: see the function's docstring (kombu issue #970).
lifecycle.guard_kombu_restore_unacked()
