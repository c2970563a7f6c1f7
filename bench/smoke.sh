#!/usr/bin/env bash
# CI smoke of the benchmark suite: every scenario against Duro only, tiny sizes, correctness only; fanout
# once more with two worker connections (-workers 2); then the Rust SDK driver (bench/rust-driver) on
# each of its scenarios.
# Exits non-zero if any orchestration's result is wrong or missing. Well under 60 s once built
# (a fresh machine first downloads the Go modules from the proxy and builds Duro).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

cargo build --release -p duro -p duro-bench
build_bench ./driver
rust_driver=${CARGO_TARGET_DIR:-target}/release/duro-bench

work=$(mktemp -d)
trap 'stop_sidecar; rm -rf "$work"' EXIT
port=$(free_port)
start_sidecar duro "$work" "$port"

passed=0 failed=0 i=0
for args in "sequence -n 5 -m 3" "fanout -n 5 -m 3" "timers -n 5 -m 3" "events -n 5" \
  "start-burst -n 5 -m 3" "waiting -n 20" "fanout -n 5 -m 3 -workers 2"; do
  set -- $args
  i=$((i + 1))
  out="$work/$i.$1.json"
  if bench/bin/driver -addr "127.0.0.1:$port" -sidecar duro -sidecar-pid "$SIDECAR_PID" \
    -scenario "$@" -concurrency 4 -timeout 20s >"$out"; then
    echo "ok   $args ($(grep -o '"completed": [0-9]*' "$out"))"
    passed=$((passed + 1))
  else
    echo "FAIL $args"
    cat "$out"
    failed=$((failed + 1))
  fi
done
for args in "sequence -n 5 -m 3" "fanout -n 5 -m 3" "timers -n 5 -m 3" "events -n 5" "start-burst -n 5 -m 3" \
  "entities -n 5 -m 3" "entity-signals -n 20 -m 3" "fanout -n 5 -m 3 -workers 2"; do
  set -- $args
  i=$((i + 1))
  out="$work/$i.rust.$1.json"
  if "$rust_driver" -addr "127.0.0.1:$port" -sidecar duro -sidecar-pid "$SIDECAR_PID" \
    -scenario "$@" -concurrency 4 -timeout 20s >"$out"; then
    echo "ok   rust $args ($(grep -o '"completed": [0-9]*' "$out"))"
    passed=$((passed + 1))
  else
    echo "FAIL rust $args"
    cat "$out"
    failed=$((failed + 1))
  fi
done
echo "bench-smoke: $passed passed, $failed failed"
[[ $failed == 0 ]]
