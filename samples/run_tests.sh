#!/usr/bin/env bash
# Runs the tests of every finished Rust sample against the real duro binary; exits non-zero on
# the first failure. Usage: samples/run_tests.sh [sample...]  (default: all listed below)
#   DURO_BIN=path  use this duro binary; otherwise the tests build it (`cargo build -p duro`)
#   CARGO_TARGET_DIR  defaults to <repo>/target
# The samples are members of the repository's workspace: one lock file, one target directory,
# one `cargo test` for all of them (`cargo test --workspace` runs them too).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

RUST_SAMPLES=(hello-cities fan-out-fan-in phone-verification monitor check-site-available async-http-api restart-vm bank-transfer)

if [[ $# -gt 0 ]]; then samples=("$@"); else samples=("${RUST_SAMPLES[@]}"); fi
packages=()
for s in "${samples[@]}"; do packages+=(-p "$s"); done
if [[ -n "${DURO_BIN:-}" ]]; then
  DURO_BIN="$(cd "$(dirname "$DURO_BIN")" && pwd)/$(basename "$DURO_BIN")"
  export DURO_BIN
fi

echo "==> samples: ${samples[*]}"
(cd "$root" && cargo test --locked "${packages[@]}")
echo "==> all sample tests passed: ${samples[*]}"
