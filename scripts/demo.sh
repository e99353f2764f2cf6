#!/usr/bin/env bash
# Install everything, build the demo project on the embedded default (SQLite + filesystem Celery broker,
# no server to install), start a Celery worker and the web app, and print the URL and the demo logins.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh runtime
export DJANGO_SETTINGS_MODULE="${DJANGO_SETTINGS_MODULE:-webapp.settings.local}"
PORT="${PORT:-8000}"
mkdir -p var
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py seed_demo
echo "==> starting a Celery worker (queues default,gpu; log in var/worker.log)"
.venv/bin/celery -A webapp worker -Q default,gpu --concurrency 1 --beat --loglevel INFO >var/worker.log 2>&1 &
worker=$!
trap 'kill $worker 2>/dev/null || true' EXIT INT TERM
echo
echo "  RLHF Studio is running at  http://127.0.0.1:$PORT/"
echo "  researcher login:  researcher / demo-researcher-pw"
echo "  labeler logins:    labeler1 / demo-labeler-pw   labeler2 / demo-labeler-pw"
echo "  admin login:       admin / demo-admin-pw      (Django admin at /admin/)"
echo
.venv/bin/python manage.py runserver "127.0.0.1:$PORT" --noreload
