#!/usr/bin/env bash
# Start the API (gunicorn) and one worker (celery, with the sweeper's beat) in
# the foreground; Ctrl-C stops both. Used by `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."

HOST="${TUSSIS_HOST:-127.0.0.1}"
PORT="${TUSSIS_PORT:-5000}"
DATA_DIR="${TUSSIS_DATA_DIR:-$PWD/var}"
mkdir -p "$DATA_DIR"

pids=()
stop() {
    trap - INT TERM EXIT
    echo
    echo "Stopping Tussis..."
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    echo "Stopped."
}
trap stop INT TERM EXIT

# Batch uploads decode every file before answering: allow them minutes, not 30 s.
# On loopback only, for this machine's own use: a deployment publishes gunicorn
# behind nginx (deploy/nginx.conf), since slow clients hold sync workers.
gunicorn --bind "$HOST:$PORT" --workers "${TUSSIS_API_WORKERS:-2}" --timeout "${TUSSIS_API_TIMEOUT:-300}" \
    'api:create_app()' &
pids+=($!)
celery -A worker.celery_app worker --beat --schedule "$DATA_DIR/celerybeat-schedule" \
    --loglevel "${TUSSIS_LOG_LEVEL:-INFO}" &
pids+=($!)

sleep 2
echo
echo "Tussis is running at http://$HOST:$PORT  (API: http://$HOST:$PORT/api/v1/jobs)"
echo "Press Ctrl-C to stop."
echo
# Return as soon as either process exits, so a crash is not hidden.
wait -n "${pids[@]}"
