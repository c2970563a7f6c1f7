#!/usr/bin/env bash
# Browser tests of the dashboard: the real duro, a worker with the official Python SDK, and
# Debian's chromium driven by playwright-core (no browser download). Installs what is missing:
# chromium (apt-get), playwright-core (npm ci), the Python SDK (.venv). Screenshots are saved
# to target/dashboard-screenshots (a CI artifact).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export CHROMIUM_BIN="${CHROMIUM_BIN:-$(command -v chromium || true)}"
if [ -z "$CHROMIUM_BIN" ]; then
  echo "installing Debian's chromium (apt-get)"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  CHROMIUM_BIN="$(command -v chromium)"
fi
export DURO_BIN="${DURO_BIN:-$REPO/target/debug/duro}"
[ -x "$DURO_BIN" ] || (cd "$REPO" && cargo build -p duro)
if [ ! -x "$REPO/.venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$REPO/.venv"
fi
"$REPO/.venv/bin/pip" install --quiet -r "$REPO/tests/python/requirements.txt"
export PYTHON_BIN="$REPO/.venv/bin/python"
export DASHBOARD_SCREENSHOTS="${DASHBOARD_SCREENSHOTS:-$REPO/target/dashboard-screenshots}"
cd "$HERE"
npm ci --no-audit --no-fund --silent
exec node --test --test-concurrency=1 dashboard.test.mjs
