#!/usr/bin/env bash
# Duro driven by the Rust SDK: builds duro and bench/rust-driver (duro-bench) in release mode, runs each
# scenario of the plan below on a fresh SQLite file, writes bench/results/<run>.duro-rust.json and redraws
# bench/RESULTS.md (section "Rust SDK driver"). About 1 min on 2 cores, plus the builds.
#
#   bash bench/rust.sh                              # the whole plan
#   RUNS="sequence-c32 latency" bash bench/rust.sh  # some runs
#   DURO_ARGS="--sqlite-relaxed-sync" bash bench/rust.sh   # extra sidecar flags (not for published figures)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

# name scenario n m concurrency [workers]
PLAN=(
  "sequence-c16     sequence       2000  5  16"
  "sequence-c32     sequence       3000  5  32"
  "sequence-c64     sequence       3000  5  64"
  "fanout-c16       fanout         1000 10  16"
  "fanout-c32       fanout         1500 10  32"
  "fanout-c64       fanout         1500 10  64"
  "fanout-c64-w2    fanout         1500 10  64 2"
  "timers           timers          300  3  32"
  "events           events         2000  0  32"
  "latency          sequence        500  1   1"
  "entities         entities       1000  5  32"
  "entity-latency   entities        300  1   1"
  "entity-signals   entity-signals 10000 32 32"
)
RUNS=${RUNS:-}
DURO_ARGS=${DURO_ARGS:-}

echo "== build" >&2
cargo build --release -p duro -p duro-bench >&2
build_bench ./report
target=${CARGO_TARGET_DIR:-target}

load=$(cut -d' ' -f1-3 /proc/loadavg)
work=$(mktemp -d)
trap 'stop_sidecar; rm -rf "$work"' EXIT
cp "$DURO_BIN" "$work/duro" # a rebuild by someone else during the run must not swap the binary
cp "$target/release/duro-bench" "$work/duro-bench"
DURO_BIN=$work/duro
# A target directory shared between worktrees can hold another checkout's build by now.
for b in duro duro-bench; do
  grep -qaF "$PWD" "$work/$b" || echo "!! $work/$b does not name $PWD: built from another checkout?" >&2
done
mkdir -p bench/results
status=0
for line in "${PLAN[@]}"; do
  read -r name scenario n m conc workers <<<"$line"
  workers=${workers:-1}
  if [[ -n $RUNS && " $RUNS " != *" $name "* ]]; then continue; fi
  out="bench/results/$name.duro-rust.json"
  rm -f "$out"
  dir="$work/$name"
  mkdir -p "$dir"
  port=$(free_port)
  # shellcheck disable=SC2086 # DURO_ARGS is a list of flags
  "$DURO_BIN" --listen "127.0.0.1:$port" --db "$dir/duro.db" --log-level warn $DURO_ARGS 2>"$dir/sidecar.log" &
  SIDECAR_PID=$!
  wait_listening "$port" "$dir/sidecar.log"
  echo "== $name (n=$n m=$m concurrency=$conc workers=$workers)" >&2
  if ! "$work/duro-bench" -addr "127.0.0.1:$port" -sidecar duro -sidecar-pid "$SIDECAR_PID" -name "$name" \
    -scenario "$scenario" -n "$n" -m "$m" -concurrency "$conc" -workers "$workers" -timeout 3m -out "$out" >/dev/null; then
    echo "!! $name failed: see $out" >&2
    status=1
  fi
  grep -E '"(work_items_per_sec|operations_per_sec|p50|p99)"' "$out" | tr -d ' \n' >&2 || true
  echo >&2
  stop_sidecar
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain -- sidecar proto sdks/rust 2>/dev/null) ]]; then commit="$commit (+ uncommitted changes)"; fi
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
bench/bin/report -results bench/results -md bench/RESULTS.md -svg bench/results.svg -notes bench/NOTES.md \
  -date "$(date -u '+%Y-%m-%d %H:%M UTC')" -machine "$machine" -commit "$commit" -load "$load"
echo "== wrote bench/RESULTS.md (load average before the runs: $load)" >&2
exit $status
