#!/usr/bin/env bash
# Install everything and run the whole test suite.
# Uses PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) when they answer, SQLite otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
# The browser tests drive Debian's Chromium through Playwright (playwright install cannot download here).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing Debian's chromium for the browser tests"
    (apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; })
  else
    echo "!! /usr/bin/chromium is missing: run 'sudo apt-get install -y chromium' or the browser tests will fail"
  fi
fi
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest "$@"
