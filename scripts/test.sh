#!/usr/bin/env bash
# Install everything and run the whole test suite.
# Uses PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379) when they answer, SQLite otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh dev
# The browser tests drive Debian's Chromium through Playwright (playwright install cannot download here);
# the shared-artifact-root test watches its two workers' file accesses with strace.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v strace >/dev/null || missing+=(strace)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "==> installing Debian's ${missing[*]} for the tests"
    (apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null; })
  else
    echo "!! missing ${missing[*]}: run 'sudo apt-get install -y ${missing[*]}' or the tests that need them skip or fail"
  fi
fi
export PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest "$@"
