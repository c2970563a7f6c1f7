#!/usr/bin/env bash
# Runs every test of the project: Rust unit and integration tests (which start the real
# duro binary), then the compatibility suite driven by the official Python SDK.
# Sets up what it needs itself (a Python venv with the pinned SDK) on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> building"
cargo build --workspace --all-targets

echo "==> rust tests"
cargo test --workspace

echo "==> python compatibility tests (official durabletask SDK)"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install --quiet -r tests/python/requirements.txt
DURO_BIN="$PWD/target/debug/duro" .venv/bin/python -m pytest tests/python -q
