#!/usr/bin/env bash
# Installs the duro Python package into the repo's .venv and runs its tests against the real sidecar.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
[ -x "${DURO_BIN:-$REPO/target/debug/duro}" ] || (cd "$REPO" && cargo build -p duro)
"$VENV/bin/python" -m pip install -q -e "$HERE"
"$VENV/bin/python" -c "import pytest" 2>/dev/null || "$VENV/bin/python" -m pip install -q pytest
cd "$HERE"
exec "$VENV/bin/python" -m pytest -q tests "$@"
