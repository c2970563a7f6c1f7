#!/usr/bin/env bash
# The scaling curve for history length (issue 21): per-step latency and sidecar CPU as one
# orchestration's history grows (100 ... 20,000 events), and 60 activities returning 1 MB each
# (a 60 MB history) with its total time and the sidecar's peak RSS. The curve runs twice: with
# the default threshold and with --stream-history-above-bytes 0 (every history streamed). The worker is the Rust SDK,
# which declares WORKER_CAPABILITY_HISTORY_STREAMING. Writes bench/results/history-<date>.md.
#
#   bash bench/history.sh                 # SIZES=100,1000,5000,10000,20000 by default
#   SIZES=100,1000 bash bench/history.sh  # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SIZES=${SIZES:-100,1000,5000,10000,20000}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p duro --bin duro
cargo build --release -q -p duro-sdk --example history_bench

work=$(mktemp -d)
trap 'stop_sidecar; rm -rf "$work"' EXIT
# Copies of the two binaries: a shared target directory may be rebuilt by someone else meanwhile.
cp "$TARGET/release/duro" "$TARGET/release/examples/history_bench" "$work/"
DURO_BIN=$work/duro
BENCH=$work/history_bench
out=bench/results/history-$(date -u +%F).md

mkdir -p "$work/curve" "$work/always" "$work/payload"
port=$(free_port)
start_sidecar duro "$work/curve" "$port"
curve=$("$BENCH" curve "http://127.0.0.1:$port" "$SIDECAR_PID" "$SIZES")
stop_sidecar

# The same with every history streamed (none in the work item).
port=$(free_port)
start_sidecar duro "$work/always" "$port" --stream-history-above-bytes 0
always=$("$BENCH" curve "http://127.0.0.1:$port" "$SIDECAR_PID" "$SIZES")
stop_sidecar

# A fresh sidecar, so that VmHWM is this run's peak.
port=$(free_port)
start_sidecar duro "$work/payload" "$port"
payload=$("$BENCH" payload "http://127.0.0.1:$port" "$SIDECAR_PID")
stop_sidecar

{
  echo "# History length: scaling curve ($(date -u '+%F %H:%M UTC'))"
  echo
  echo "\`bash bench/history.sh\` on $(nproc) cores, $(git rev-parse --short HEAD 2>/dev/null || echo '?'); release build,"
  echo "SQLite store, one Rust SDK worker (declares history streaming) in the bench process."
  echo
  echo "## Per-step cost as the history grows"
  echo
  echo "One orchestration grows its history to the target with rounds of up to 500 parallel activities, then"
  echo "runs 50 sequential one-activity steps. A step is one orchestrator turn (the worker fetches the history"
  echo "with StreamInstanceHistory above 1 MiB, and replays it) plus one activity. Step time comes from the"
  echo "orchestration's own turn timestamps (sidecar clock, ms resolution); sidecar CPU from /proc (10 ms ticks)."
  echo
  echo "Default (\`--stream-history-above-bytes\` 1 MiB: these histories travel in the work item):"
  echo
  echo "$curve"
  echo
  echo "\`--stream-history-above-bytes 0\` (every turn's history by StreamInstanceHistory):"
  echo
  echo "$always"
  echo
  echo "## 60 × 1 MB activity results"
  echo
  echo "$payload"
} > "$out"
cat "$out"
echo "wrote $out" >&2
