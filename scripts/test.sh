#!/usr/bin/env bash
# Runs every test of the project: Rust unit and integration tests (which start the real
# duro binary), the compatibility suite driven by the official Python SDK, a Go test with the
# official Go SDK (bench/sdkcompat), the schema-based fuzz run of the HTTP API, and the per-component suites that exist (SDKs, samples, bench
# smoke). Sets up what it needs itself (a Python venv with the pinned SDK, npm packages,
# Go modules, a PostgreSQL server for the PostgreSQL store's tests: scripts/pg.sh) on a
# fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each "==> step" line starts a timed step; the wall time of every step is printed at the end
# (and on failure), so what dominates the run is visible in every CI log.
STEP="" STEP_START=$SECONDS STEP_TIMES=""
step() {
  [ -n "$STEP" ] && STEP_TIMES+="$(printf '%5ss  %s' $((SECONDS - STEP_START)) "$STEP")"$'\n'
  STEP=$1 STEP_START=$SECONDS
  [ -n "$1" ] && echo "==> $1"
  return 0
}
report_times() {
  step ""
  printf '==> wall time per step (total %ss)\n%s' "$SECONDS" "$STEP_TIMES"
}
# The PostgreSQL server of the store's tests (started before the Rust tests), stopped on exit.
PG_DIR=""
on_exit() {
  if [ -n "$PG_DIR" ]; then
    bash scripts/pg.sh stop "$PG_DIR" || true
    rm -rf "$PG_DIR"
  fi
  report_times
}
trap on_exit EXIT

# Fails fast, in one message, when a tool is missing (Rust, Python, Node, Go, git).
bash scripts/checks/prereqs.sh

step "repository checks"
bash scripts/checks/no_machine_paths.sh

step "style and lint (rustfmt, clippy -D warnings, ruff, gofmt)"
bash scripts/checks/lint.sh

step "building (the sidecar, the SDK, the tests and the Rust samples: one workspace)"
cargo build --workspace --all-targets
# The Rust tests are given this binary (DURO_BIN) instead of building `-p duro` themselves, which
# would compile a second copy of its dependencies with the feature set of `-p duro` alone.
built_duro="${CARGO_TARGET_DIR:-$PWD/target}/debug/duro"

# One PostgreSQL server for every test of the PostgreSQL store (each takes a task hub of its
# own); a server given in DURO_TEST_PG_URL is used instead.
if [ -z "${DURO_TEST_PG_URL:-}" ]; then
  step "PostgreSQL server for the store's tests (scripts/pg.sh; installs postgresql if missing)"
  PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/duro-pg.XXXXXX")
  pg_env=$(bash scripts/pg.sh start "$PG_DIR")
  eval "$pg_env"
fi

step "rust tests (the samples' tests included)"
DURO_BIN="$built_duro" cargo test --workspace

step "python compatibility tests (official durabletask SDK)"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install --quiet -r tests/python/requirements.txt
DURO_BIN="$PWD/target/debug/duro" .venv/bin/python -m pytest tests/python -q

step "python compatibility tests again, every sidecar on a PostgreSQL task hub of its own"
DURO_TEST_STORE=postgres DURO_BIN="$PWD/target/debug/duro" .venv/bin/python -m pytest tests/python -q

step "Go SDK compatibility tests (official durabletask-go, bench/sdkcompat)"
DURO_BIN="$PWD/target/debug/duro" bash -c 'cd bench && GOFLAGS="${GOFLAGS:--mod=mod}" go test -count=1 ./sdkcompat/'
echo "--> again on a PostgreSQL task hub"
DURO_TEST_STORE=postgres DURO_BIN="$PWD/target/debug/duro" bash -c 'cd bench && GOFLAGS="${GOFLAGS:--mod=mod}" go test -count=1 ./sdkcompat/'

step "deploy/ (kubeconform; the image's entrypoint and the manifest's duro as their user)"
bash scripts/checks/deploy.sh

step "HTTP API fuzz (schemathesis, bounded)"
bash tests/http/fuzz.sh

step "dashboard in a browser (Debian chromium + playwright-core; screenshots in target/dashboard-screenshots)"
DURO_BIN="$PWD/target/debug/duro" bash tests/dashboard/run_tests.sh

# Suites of other components, each self-contained.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
# (samples/run_tests.sh is not among them: `cargo test --workspace` ran the Rust samples' tests.)
for suite in sdks/python/run_tests.sh sdks/typescript/run_tests.sh samples/polyglot/run.sh samples/python/run_tests.sh bench/smoke.sh bench/stranded.sh; do
  if [ -f "$suite" ]; then
    step "$suite"
    bash "$suite"
  fi
done
step "samples/phone-verification/run.sh next to a running Duro, on taken ports, with a failing Duro"
# (its binaries were built with the workspace above)
DURO_BIN="$built_duro" DURO_SAMPLE_SCRIPTS=1 cargo test -p duro-tests --test sample_scripts

step "README snippets, run as pasted against a real duro"
.venv/bin/pip install --quiet -e sdks/python
cargo build --quiet -p duro-sdk --examples
DURO_BIN="$built_duro" DURO_SNIPPETS=1 cargo test -p duro-tests --test readme_snippets
echo "==> all tests passed"
