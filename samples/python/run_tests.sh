#!/usr/bin/env bash
# Tests of the Python samples (official durabletask SDK) against the real duro binary.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -r "$REPO/tests/python/requirements.txt"
[ -x "${DURO_BIN:-$REPO/target/debug/duro}" ] || (cd "$REPO" && cargo build -p duro)
cd "$HERE"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider test_samples.py
