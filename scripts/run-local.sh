#!/usr/bin/env bash
# Start the API (gunicorn) and one worker (celery, with the sweeper's beat) in
# the foreground; Ctrl-C stops both. Used by `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."

HOST="${TUSSIS_HOST:-127.0.0.1}"
PORT="${TUSSIS_PORT:-5000}"
DATA_DIR="${TUSSIS_DATA_DIR:-$PWD/var}"
mkdir -p "$DATA_DIR"
URL="http://$HOST:$PORT"

port_busy() {
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}
if port_busy; then
    echo "Tussis cannot start: port $PORT on $HOST is busy (another program listens there)." >&2
    echo "Choose another port: TUSSIS_PORT=5001 make run" >&2
    exit 1
fi

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
# Threads per worker (gthread): TUSSIS_API_THREADS, read by gunicorn.conf.py.
# On loopback only, for this machine's own use: a deployment publishes gunicorn
# behind nginx (deploy/nginx.conf), which buffers slow clients' requests.
gunicorn --bind "$HOST:$PORT" --workers "${TUSSIS_API_WORKERS:-2}" --timeout "${TUSSIS_API_TIMEOUT:-300}" \
    'api:create_app()' &
api=$!
pids+=("$api")
celery -A worker.celery_app worker --beat --schedule "$DATA_DIR/celerybeat-schedule" \
    --loglevel "${TUSSIS_LOG_LEVEL:-INFO}" &
pids+=($!)

# The banner only once gunicorn answers: a port taken since the check above (or any
# other start failure) ends here with gunicorn's error, never after a banner.
for _ in $(seq 1 600); do
    if ! kill -0 "$api" 2>/dev/null; then
        echo "Tussis did not start: gunicorn exited (port $PORT busy? set TUSSIS_PORT)." >&2
        exit 1
    fi
    if python -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
        "$URL/healthz" 2>/dev/null; then
        break
    fi
    sleep 0.1
done
echo
echo "Tussis is running at $URL  (API: $URL/api/v1/jobs)"
if [ "$URL" != "http://127.0.0.1:5000" ]; then
    # The CLI and the client library default to port 5000: tell them where it is.
    echo "For the tussis command and the client library: export TUSSIS_URL=$URL"
fi
echo "Press Ctrl-C to stop."
echo
# Return as soon as either process exits, so a crash is not hidden.
wait -n "${pids[@]}"
