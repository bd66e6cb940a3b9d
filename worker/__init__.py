"""Celery worker: decodes audio, runs the models, writes results into the job row.

Start it with ``celery -A worker.celery_app worker``. Importing this package, or
any module in it but ``worker.celery_app``, reads no settings and builds no
Celery app.
"""
