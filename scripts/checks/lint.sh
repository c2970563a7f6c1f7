#!/usr/bin/env bash
# Style and lint gates, run first by scripts/test.sh (fast, and fails before the long suites):
# rustfmt (rustfmt.toml) and clippy with warnings as errors (the workspace denies unwrap_used),
# ruff for every Python file (ruff.toml), gofmt for the Go code, and tsc type checks of the
# TypeScript packages (their own run_tests.sh builds them too).
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "--> cargo fmt --check (the workspace: sidecar, core, SDK, tests, samples)"
cargo fmt --all --check

echo "--> cargo clippy --workspace --all-targets -D warnings"
cargo clippy --quiet --workspace --all-targets -- -D warnings

echo "--> ruff (Python)"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install --quiet "ruff==0.17.6"
.venv/bin/ruff check .

echo "--> gofmt (Go)"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change these files (run gofmt -w on them):" >&2
  echo "$unformatted" >&2
  exit 1
fi
echo "lint: ok"
