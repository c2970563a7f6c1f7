#!/usr/bin/env bash
# Idle instances at scale (issue 21): for each N, N instances through the real sidecar (half waiting on an
# event, half on a 30-day durable timer), then sidecar memory and CPU while they wait, the time a restart
# takes until gRPC serves (recovery from the store), and the rate at which raising every event drains.
#
#   bash bench/idle.sh                 # N = 10000 100000 (about 3 min on 2 cores, plus the builds)
#   SIZES="10000 100000 1000000" bash bench/idle.sh     # 1M adds about 15 min and ~2 GB of disk
#
# Writes bench/results/idle-<date>.md (a markdown table and the conditions). DURO_BIN and IDLE_BIN pick the
# binaries (default: release builds in $CARGO_TARGET_DIR or target/); BUILD=0 skips building them;
# KEEP=1 keeps the databases (in $WORK, default a temporary directory).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SIZES=${SIZES:-"10000 100000"}
TARGET=${CARGO_TARGET_DIR:-target}
IDLE_BIN=${IDLE_BIN:-$TARGET/release/examples/idle_load}
IDLE_WINDOW=${IDLE_WINDOW:-5}
if [[ ${BUILD:-1} == 1 ]]; then
  cargo build --release -q -p duro
  cargo build --release -q -p duro-sdk --example idle_load
fi
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
mkdir -p bench/results
OUT=bench/results/idle-$(date -u +%Y-%m-%d).md
TICK=$(getconf CLK_TCK)

cleanup() {
  stop_sidecar
  if [[ ${KEEP:-0} != 1 ]]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

now_ms() { date +%s%3N; }
kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# serve DB ARGS...: starts the sidecar on DB; sets SIDECAR_PID and SERVE_MS (exec → gRPC port open,
# which happens only after the store is opened and checked and the engine recovered).
serve() {
  local db=$1
  shift
  PORT=$(free_port)
  HTTP=$(free_port)
  local t0
  t0=$(now_ms)
  "$DURO_BIN" --listen "127.0.0.1:$PORT" --http-listen "127.0.0.1:$HTTP" --metrics-open --db "$db" \
    --log-level warn "$@" 2>>"$WORK/sidecar.log" &
  SIDECAR_PID=$!
  until (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do
    if ! kill -0 "$SIDECAR_PID" 2>/dev/null; then
      cat "$WORK/sidecar.log" >&2
      return 1
    fi
    sleep 0.01
  done
  SERVE_MS=$(($(now_ms) - t0))
  export DURO_ADDRESS="http://127.0.0.1:$PORT"
}

# figure FIELD: a figure of /stats (instances.<status>, readyEvents, timersWaiting, leases).
figure() {
  curl -sf "http://127.0.0.1:$HTTP/stats" | python3 -c "
import json, sys
d = json.load(sys.stdin)
for k in '$1'.split('.'):
    d = d[k]
print(d)"
}

# settle: waits until nothing is pending, ready or leased (every instance parked).
settle() {
  until [[ $(figure instances.pending) == 0 && $(figure readyEvents) == 0 && $(figure leases) == 0 ]]; do sleep 0.2; done
}

{
  echo "# Idle instances at scale — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo); SQLite store (WAL," \
    "synchronous=FULL); default options (history cache 10,000 instances / 128 MiB, timer horizon 60 s)."
  echo "N instances: N/2 waiting on an event, N/2 on a 30-day durable timer, all started through the real"
  echo "sidecar by \`idle_load\` (Rust SDK client, 256 starts in flight; its SDK worker runs each first turn)."
  echo
  echo "| N | setup s (starts/s) | RSS idle MiB | peak MiB | CPU idle s / ${IDLE_WINDOW} s | DB MiB | start-up s (quick_check) | start-up s (no check) | RSS after restart MiB | drain orch/s | RSS after drain MiB (peak) |"
  echo "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
} >"$WORK/table.md"

for n in $SIZES; do
  echo "== N=$n" >&2
  db="$WORK/idle-$n.db"
  rm -f "$db" "$db"-*
  serve "$db"
  t0=$(now_ms)
  created=$("$IDLE_BIN" create "$n" idle)
  echo "$created" >&2
  settle
  setup_s=$(awk -v ms=$(($(now_ms) - t0)) 'BEGIN { printf "%.1f", ms / 1000 }')
  starts=$(sed -E 's/.*starts_per_s=([0-9]+).*/\1/' <<<"$created")
  running=$(figure instances.running)
  timers=$(figure timersWaiting)
  sleep 2
  c0=$(cpu_ticks "$SIDECAR_PID")
  sleep "$IDLE_WINDOW"
  c1=$(cpu_ticks "$SIDECAR_PID")
  idle_cpu=$(awk -v t=$((c1 - c0)) -v hz="$TICK" 'BEGIN { printf "%.2f", t / hz }')
  rss=$(mib "$(kib "$SIDECAR_PID" VmRSS)")
  hwm=$(mib "$(kib "$SIDECAR_PID" VmHWM)")
  stop_sidecar
  db_mib=$(du -cm "$db"* | awk 'END { print $1 }')

  serve "$db"
  start_check=$(awk -v ms="$SERVE_MS" 'BEGIN { printf "%.2f", ms / 1000 }')
  stop_sidecar
  serve "$db" --sqlite-check off
  start_plain=$(awk -v ms="$SERVE_MS" 'BEGIN { printf "%.2f", ms / 1000 }')
  sleep 1
  rss_restart=$(mib "$(kib "$SIDECAR_PID" VmRSS)")

  raised=$("$IDLE_BIN" raise "$n" idle)
  echo "$raised" >&2
  begin=$(sed -E 's/.*begin_ms=([0-9]+).*/\1/' <<<"$raised")
  until [[ $(figure instances.completed) -ge $((n / 2)) ]]; do sleep 0.1; done
  drain=$(awk -v n=$((n / 2)) -v ms=$(($(now_ms) - begin)) 'BEGIN { printf "%.0f", n * 1000 / ms }')
  rss_drain=$(mib "$(kib "$SIDECAR_PID" VmRSS)")
  hwm_drain=$(mib "$(kib "$SIDECAR_PID" VmHWM)")
  left=$(figure timersWaiting)
  stop_sidecar
  echo "running=$running timers=$timers timers_after=$left" >&2
  echo "| $n | $setup_s ($starts) | $rss | $hwm | $idle_cpu | $db_mib | $start_check | $start_plain | $rss_restart | $drain | $rss_drain ($hwm_drain) |" >>"$WORK/table.md"
  rm -f "$db" "$db"-*
done

{
  cat "$WORK/table.md"
  echo
  echo "- setup: first start → every instance parked (no pending instance, no ready event, no lease), the"
  echo "  starts' rate in parentheses; RSS idle: VmRSS with all N parked, 2 s after they settled; peak: VmHWM"
  echo "  then (includes the setup); CPU idle: the sidecar's utime+stime over ${IDLE_WINDOW} s while they wait."
  echo "- start-up: exec of the sidecar → its gRPC port open (the store opened and checked — \`PRAGMA"
  echo "  quick_check\` by default, linear in the file — migrations, the engine's recovery); again with"
  echo "  \`--sqlite-check off\`, i.e. the recovery alone. RSS after restart: with nothing cached yet."
  echo "- drain: the N/2 events raised (256 in flight) on the restarted sidecar (cold history cache) → the"
  echo "  last of those N/2 instances completed, by \`/stats\`; one turn per instance."
  echo "- Figures taken while other jobs may run on the machine are noisy; the script is re-runnable as is."
} >"$OUT"
cat "$OUT"
