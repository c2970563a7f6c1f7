#!/usr/bin/env bash
# Runs the tests of every finished sample against the real duro binary; exits non-zero on
# the first failure. Usage: samples/run_tests.sh [sample...]  (default: all listed below)
#   DURO_BIN=path  use this duro binary instead of building target/debug/duro
#   CARGO_TARGET_DIR  defaults to <repo>/target (shares compiled dependencies)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

# Rust samples: standalone crates (each has its own [workspace]).
RUST_SAMPLES=(hello-cities fan-out-fan-in phone-verification monitor check-site-available async-http-api restart-vm)

if [[ $# -gt 0 ]]; then samples=("$@"); else samples=("${RUST_SAMPLES[@]}"); fi

if [[ -z "${DURO_BIN:-}" ]]; then
  echo "==> building duro"
  (cd "$root" && cargo build -p duro)
  export DURO_BIN="$CARGO_TARGET_DIR/debug/duro"
fi

for s in "${samples[@]}"; do
  echo "==> samples/$s"
  (cd "$here/$s" && cargo test --locked)
done
echo "==> all sample tests passed: ${samples[*]}"
