"""Celery worker: ``celery -A worker worker``. Decodes audio, runs the model,
writes the result into the job row."""

from worker.app import celery

__all__ = ["celery"]
