#!/usr/bin/env bash
# Install everything, build the demo project on the embedded default (SQLite + filesystem Celery broker,
# no server to install), start the Celery workers and the web app, and print the URL and the demo logins.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh runtime
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-webapp.settings.local}"
PORT="${PORT:-8000}"
mkdir -p var
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py seed_demo
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
echo "==> starting Celery: a training worker on the gpu queue (var/gpu-worker.log) and one for default + beat (var/worker.log)"
.venv/bin/celery -A webapp worker -n gpu@%h -Q gpu --pool solo --loglevel INFO >var/gpu-worker.log 2>&1 &
pids+=($!)
.venv/bin/celery -A webapp worker -n default@%h -Q default --concurrency 1 --beat \
  --schedule var/celerybeat-schedule --loglevel INFO >var/worker.log 2>&1 &
pids+=($!)
.venv/bin/python manage.py runserver "127.0.0.1:$PORT" --noreload &
pids+=($!)
sleep 2
echo
echo "  RLHF Studio is running at  http://127.0.0.1:$PORT/"
echo "  researcher login:  researcher / demo-researcher-pw"
echo "  labeler logins:    labeler1 / demo-labeler-pw   labeler2 / demo-labeler-pw"
echo "  admin login:       admin / demo-admin-pw      (Django admin at /admin/)"
echo "  Ctrl-C stops everything."
echo
wait -n "${pids[@]}"
