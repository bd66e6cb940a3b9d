"""The worker's Celery application: the one entry module (``celery -A worker.celery_app``).

It reads the settings, builds the app, connects the process signals and
registers the tasks. Nothing imports this module (an import-linter contract
says so); tasks are ``shared_task``\\ s and reach the app through ``self.app``.
"""

from __future__ import annotations

from shared import prometheus_dir

# First: prometheus_client chooses file-backed values (one file per prefork child,
# summed by the parent's /metrics) on import, which the imports below trigger.
prometheus_dir.prepare("worker")

from celery.signals import (  # noqa: E402
    setup_logging,
    task_failure,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
)

from shared.config import load_settings  # noqa: E402
from shared.queue import make_celery, worker_queues  # noqa: E402
from worker import lifecycle, runtime, tasks  # noqa: E402

settings = load_settings()
runtime.configure(settings)
celery = make_celery(settings)
try:
    _pins = lifecycle.served_pins(settings)
except SystemExit:
    _pins = []  # lifecycle.check_bundles says why at worker_init, and stops the worker
# The shared queues, then a single-job and a batch queue per served model: a worker takes
# only the work of models it has loaded (shared/queue.py).
celery.conf.task_queues = worker_queues(settings, _pins)
# Flower's task view needs task events; the embedded SQLite broker carries none.
celery.conf.worker_send_task_events = settings.worker_task_events and not settings.embedded_broker
# worker.tasks defines shared tasks: importing it (above) attaches them to this app.
__all__ = ["celery", "tasks"]

setup_logging.connect(lifecycle.configure_logging, weak=False)
worker_init.connect(lifecycle.check_bundles, weak=False)
worker_init.connect(lifecycle.serve_metrics, weak=False)
worker_process_init.connect(lifecycle.init_child, weak=False)
worker_process_shutdown.connect(lifecycle.child_shutdown, weak=False)
task_prerun.connect(lifecycle.bind_task_context, weak=False)
task_postrun.connect(lifecycle.unbind_task_context, weak=False)
task_failure.connect(lifecycle.on_task_failure, weak=False)
# Before the consumer connects: see the function's docstring (kombu issue #970).
lifecycle.guard_kombu_restore_unacked()
