#!/usr/bin/env bash
# Container entry point: one image, one role per container.
#   boot.sh api      the Flask API under gunicorn (gunicorn.conf.py: gthread workers,
#                    TUSSIS_API_THREADS threads each, for long polls); on 0.0.0.0
#                    it starts only once an API key exists (`tussis keys create`).
#                    Publish it behind a buffering proxy (deploy/nginx.conf, the
#                    compose `proxy` service), never directly: a worker's threads
#                    are a fixed number, so enough slow clients would hold them all.
#   boot.sh worker   a Celery worker (analyses jobs)
#   boot.sh beat     Celery beat: schedules the sweeper that re-publishes jobs
#                    whose broker message was lost. Run exactly one per deployment.
#   boot.sh migrate  apply the database migrations, then exit
# Each role execs its process, so it gets the container's signals directly.
set -euo pipefail
cd "$(dirname "$0")"

case "${1:-}" in
    api)
        exec gunicorn --bind "0.0.0.0:${PORT:-5000}" --workers "${TUSSIS_API_WORKERS:-2}" \
            --timeout "${TUSSIS_API_TIMEOUT:-300}" \
            'api:create_app()'
        ;;
    worker)
        exec celery -A worker.celery_app worker --loglevel "${TUSSIS_LOG_LEVEL:-INFO}"
        ;;
    beat)
        exec celery -A worker.celery_app beat --loglevel "${TUSSIS_LOG_LEVEL:-INFO}" \
            --schedule /tmp/celerybeat-schedule
        ;;
    migrate)
        exec alembic upgrade head
        ;;
    *)
        echo "usage: $0 {api|worker|beat|migrate}" >&2
        exit 2
        ;;
esac
