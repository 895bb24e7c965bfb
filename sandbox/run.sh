#!/usr/bin/env bash
# Start the demo shop: migrate, load the demo data, then a Celery worker and beat in the
# background and Django's development server in the foreground. Ctrl-C stops all three.
#
# Started by `make run` (which first installs everything into .venv). Environment:
#   PORT               port of the web server (default 8000), always on 127.0.0.1
#   VENV               the virtualenv to use (default .venv)
#   DATABASE_URL, CELERY_BROKER_URL   see sandbox/settings.py (default: SQLite + filesystem)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
CELERY="$VENV/bin/celery"
PORT="${PORT:-8000}"
# Links in the demo's messages (unsubscribe, preferences, tracked clicks) point at this shop.
export OMNICHANNEL_SITE_URL="${OMNICHANNEL_SITE_URL:-http://127.0.0.1:$PORT}"
VAR_DIR="${OMNICHANNEL_VAR_DIR:-var}"
LOG_DIR="$VAR_DIR/log"
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-sandbox.settings}"
export PYTHONUNBUFFERED=1

if [[ ! -x "$PY" ]]; then
    echo "No virtualenv at $VENV: run 'make run' (or 'make install') first." >&2
    exit 1
fi
mkdir -p "$LOG_DIR"

step() { printf '\n==> %s\n' "$*"; }

step "Migrating the database"
"$PY" manage.py migrate --noinput

step "Loading the demo data (only what is missing)"
"$PY" manage.py sandbox_load_demo

step "Collecting static files"
"$PY" manage.py collectstatic --noinput --verbosity 0

if "$PY" manage.py help omnichannel_setup_schedules >/dev/null 2>&1; then
    step "Setting up the periodic tasks"
    "$PY" manage.py omnichannel_setup_schedules
fi

PIDS=()  # started in the background; the EXIT trap stops them all
any_alive() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && return 0
    done
    return 1
}
cleanup() {
    trap - EXIT INT TERM
    if ((${#PIDS[@]})) && any_alive; then
        echo
        echo "Stopping the web server, the Celery worker and beat..."
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        # A warm shutdown lets the worker finish its task (it takes a few seconds on the
        # filesystem broker); give up after 30 s.
        for _ in $(seq 60); do
            any_alive || break
            sleep 0.5
        done
        kill -KILL "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "Starting the Celery worker and beat (logs in $LOG_DIR/)"
"$CELERY" -A sandbox worker --loglevel=INFO --concurrency=2 \
    >"$LOG_DIR/celery-worker.log" 2>&1 &
PIDS+=($!)
"$CELERY" -A sandbox beat --loglevel=INFO \
    --schedule="$VAR_DIR/celery/beat-schedule" \
    >"$LOG_DIR/celery-beat.log" 2>&1 &
PIDS+=($!)

sleep 2
for pid in "${PIDS[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "A Celery process exited at once; see $LOG_DIR/celery-*.log" >&2
        exit 1
    fi
done

URL="http://127.0.0.1:$PORT"
cat <<EOF

  ----------------------------------------------------------------------
  Demo shop:        $URL/
  Oscar dashboard:  $URL/dashboard/
  Django admin:     $URL/admin/
  Staff login:      staff@example.com / omnichannel-demo   (username: staff)
  Customers:        any demo customer's email / omnichannel-demo
  Celery logs:      $LOG_DIR/celery-worker.log, $LOG_DIR/celery-beat.log
  Press Ctrl-C to stop the web server, the worker and beat.
  ----------------------------------------------------------------------

EOF

# In the background with `wait`, not in the foreground: bash runs a trap only once the
# foreground command is over, and Ctrl-C or a TERM to this script must stop everything at once.
"$PY" manage.py runserver "127.0.0.1:$PORT" &
SERVER=$!
PIDS+=("$SERVER")
status=0
wait "$SERVER" || status=$?
exit "$status"
