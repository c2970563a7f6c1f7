#!/usr/bin/env bash
# Duro's PostgreSQL multi-sidecar mode, measured against a real PostgreSQL (scripts/pg.sh, stopped at
# the end): about 4-5 minutes on 2 cores, plus the builds.
#
#   1. throughput: sequence and fanout with 1, 2 and 3 sidecars on one task hub, each sidecar with
#      its own driver process (client + SDK worker), next to one SQLite sidecar with the same driver
#      settings; CPU seconds of every duro, driver and the PostgreSQL server during each run;
#   2. failover: 3 sidecars under load, kill -9 of one (and of its driver: the pod dies), with
#      --lease-seconds 6 (default) and 2: lost / duplicated work, time until the dead sidecar's
#      instances progress on the others, renewal traffic of idle sidecars;
#   3. split brain: one of 3 sidecars frozen (SIGSTOP) for 3 leases while it has work in flight,
#      then resumed (SIGCONT): its commits refused by fencing, duplicated history, every output.
#
# Writes bench/results/cluster/*.json and bench/results/cluster-<date>.md. Exit status 1 when a
# check fails (lost, wrong or duplicated work). Sizes: env SEQ_N SEQ_M FAN_N FAN_M CONC (per driver),
# FO_N (per driver, failover and split brain), PHASES="throughput failover splitbrain".
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

SEQ_N=${SEQ_N:-400} SEQ_M=${SEQ_M:-5}
FAN_N=${FAN_N:-200} FAN_M=${FAN_M:-10}
CONC=${CONC:-32}
FO_N=${FO_N:-800} FO_M=${FO_M:-5} FO_CONC=${FO_CONC:-16}
PHASES=${PHASES:-throughput failover splitbrain}

echo "== build" >&2
cargo build --release -p duro >&2
build_bench ./driver

work=$(mktemp -d /tmp/duro-cluster.XXXXXX) # under /tmp and searchable: PostgreSQL runs as nobody when we are root
chmod 755 "$work"
cp "$DURO_BIN" "$work/duro"
DURO_BIN=$work/duro
out=bench/results/cluster
mkdir -p "$out"
PIDS=()
declare -A DJSON

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
  bash scripts/pg.sh stop "$work/pg" >/dev/null 2>&1 || true
  if [[ ${KEEP:-} == 1 ]]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

echo "== PostgreSQL" >&2
mkdir -p "$work/pg"
eval "$(bash scripts/pg.sh start "$work/pg")"
URL=$DURO_TEST_PG_URL
PGVER=$(psql "$URL" -XAtc "SHOW server_version")
PGSET=$(psql "$URL" -XAtc "SELECT string_agg(name || '=' || setting, ' ') FROM pg_settings WHERE name IN ('fsync','synchronous_commit','shared_buffers','max_connections')")
postmaster=$(head -n1 "$work/pg/data/postmaster.pid")

# ---- measurements ----

ticks() { # utime+stime of a process in 10 ms ticks (0 when gone)
  local s
  s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
  s=${s##*) }
  set -- $s
  echo $((${12} + ${13}))
}
pg_ticks() { # the whole server: postmaster (with reaped children) + live backends
  local s t c
  s=$(cat "/proc/$postmaster/stat")
  s=${s##*) }
  set -- $s
  t=$((${12} + ${13} + ${14} + ${15}))
  for c in $(ps --ppid "$postmaster" -o pid=); do t=$((t + $(ticks "$c"))); done
  echo "$t"
}
machine_ticks() { # busy ticks of all cores (user+nice+system+irq+softirq+steal)
  awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}
pg_xacts() { # transactions (pg_stat_database: flushed by backends at most once a second), statement
  # time (ms) so far, and the next transaction id (write transactions, exact)
  psql "$URL" -XAt -F' ' -c "SELECT xact_commit + xact_rollback, round(active_time), pg_snapshot_xmax(pg_current_snapshot()) FROM pg_stat_database WHERE datname = current_database()"
}
metric() { # metric PORT NAME: sum of a metric's samples on a sidecar's /metrics
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {print s + 0}'
}
now() { date +%s.%N; }

# ---- sidecars and drivers ----

# start_duro NAME DB HUB LEASE: sets DPID DPORT HPORT OWNER (duro's start-up line names its owner id).
start_duro() {
  local name=$1 db=$2 hub=$3 lease=$4 i
  DPORT=$(free_port) HPORT=$(free_port)
  local args=(--listen "127.0.0.1:$DPORT" --http-listen "127.0.0.1:$HPORT" --metrics-open --log-level info)
  if [[ $db == postgres* ]]; then args+=(--db "$db" --task-hub "$hub" --lease-seconds "$lease"); else args+=(--db "$db"); fi
  "$DURO_BIN" "${args[@]}" 2>"$work/$name.log" &
  DPID=$!
  PIDS+=("$DPID")
  for i in $(seq 400); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$DPORT") 2>/dev/null; then break; fi
    if ! kill -0 "$DPID" 2>/dev/null || [[ $i == 400 ]]; then
      echo "duro $name did not start:" >&2
      cat "$work/$name.log" >&2
      exit 1
    fi
    sleep 0.05
  done
  OWNER=$(grep -o "sidecar '[^']*'" "$work/$name.log" | head -n1 | cut -d"'" -f2 || true)
}

# start_driver NAME PORT SIDECAR_PID PREFIX SCENARIO N M CONC: sets RPID; JSON in $work/NAME.json.
# Its workers stay connected after its own run until $work/HOLD exists (finish_drivers): a sidecar
# whose last worker leaves keeps the leases of other drivers' work it holds (see NOTES.md).
start_driver() {
  bench/bin/driver -addr "127.0.0.1:$2" -sidecar-pid "$3" -prefix "$4" -scenario "$5" -n "$6" -m "$7" \
    -concurrency "$8" -timeout "${DRIVER_TIMEOUT:-90s}" -name "$1" -out "$work/$1.json" -hold "$work/$HOLD" >/dev/null 2>"$work/$1.err" &
  RPID=$!
  PIDS+=("$RPID")
  DJSON[$RPID]=$work/$1.json
}

# finish_drivers PID...: waits until each driver wrote its JSON (or died), then lets them all go;
# fails when one failed.
finish_drivers() {
  local p ok=0 left
  while :; do
    left=0
    for p in "$@"; do
      if kill -0 "$p" 2>/dev/null && [[ ! -s ${DJSON[$p]} ]]; then left=1; fi
    done
    [[ $left == 0 ]] && break
    sleep 0.1
  done
  touch "$work/$HOLD"
  for p in "$@"; do wait "$p" || ok=1; done
  return $ok
}

stop_pids() { local p; for p in "$@"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }

# wait_hub_done HUB TIMEOUT: until no instance of the hub is pending or running.
wait_hub_done() {
  local i left
  for i in $(seq $(($2 * 5))); do
    left=$(psql "$URL" -XAtc "SELECT count(*) FROM $1.instances WHERE status IN (0, 6, 7)")
    [[ $left == 0 ]] && return 0
    sleep 0.2
  done
  echo "!! $left instances of $1 still not finished after $2 s" >&2
  return 1
}

status=0

# ---- 1. throughput ----

throughput() { # throughput SCENARIO N M BACKEND SIDECARS
  local scen=$1 n=$2 m=$3 backend=$4 k=$5 j hub="tp_${1}_$5" tag="tp.$1.$4$5"
  HOLD=$tag.done
  local spids=() dports=() hports=() dpids=() db
  echo "== throughput $scen on $backend × $k (n=$n m=$m concurrency=$CONC per driver)" >&2
  for j in $(seq "$k"); do
    if [[ $backend == pg ]]; then db=$URL; else db=$work/$tag.db; fi
    start_duro "$tag.s$j" "$db" "$hub" 6
    spids+=("$DPID") dports+=("$DPORT") hports+=("$HPORT")
  done
  local pg0 m0 x0 t0 pg1 m1 x1 t1
  pg0=$(pg_ticks) m0=$(machine_ticks) x0=$(pg_xacts) t0=$(now)
  for j in $(seq "$k"); do
    start_driver "$tag.d$j" "${dports[j - 1]}" "${spids[j - 1]}" "d$j" "$scen" "$n" "$m" "$CONC"
    dpids+=("$RPID")
  done
  local ok=1
  finish_drivers "${dpids[@]}" || ok=0
  pg1=$(pg_ticks) m1=$(machine_ticks) x1=$(pg_xacts) t1=$(now)
  local commits=() j2
  for j2 in "${hports[@]}"; do
    commits+=("$(metric "$j2" duro_store_commit_duration_seconds_sum)/$(metric "$j2" duro_store_commit_duration_seconds_count)")
  done
  stop_pids "${spids[@]}"
  local chk='{}'
  if [[ $backend == pg ]]; then chk=$(python3 bench/cluster_check.py check "$URL" "$hub"); fi
  python3 bench/cluster_check.py record "$out/$tag.json" \
    "phase=throughput" "scenario=$scen" "backend=$backend" "sidecars=$k" "n=$n" "m=$m" "concurrency=$CONC" \
    "pg_cpu_seconds=$(((pg1 - pg0)))/100" "machine_busy_core_seconds=$(((m1 - m0)))/100" \
    "elapsed_seconds=$t1-$t0" "pg_xacts=$x0|$x1" "commit_sum_count=${commits[*]}" "check=$chk" \
    "drivers_ok=$ok" -- "$work/$tag".d*.json || status=1
}

if [[ " $PHASES " == *" throughput "* ]]; then
  for k in 1 2 3; do
    throughput sequence "$SEQ_N" "$SEQ_M" pg "$k"
    throughput fanout "$FAN_N" "$FAN_M" pg "$k"
  done
  throughput sequence "$SEQ_N" "$SEQ_M" sqlite 1
  throughput fanout "$FAN_N" "$FAN_M" sqlite 1
fi

# ---- 2. failover ----

# start_three TAG HUB LEASE: three PostgreSQL sidecars; sets SPIDS DPORTS HPORTS OWNERS.
start_three() {
  SPIDS=() DPORTS=() HPORTS=() OWNERS=()
  local j
  for j in 1 2 3; do
    start_duro "$1.s$j" "$URL" "$2" "$3"
    SPIDS+=("$DPID") DPORTS+=("$DPORT") HPORTS+=("$HPORT") OWNERS+=("$OWNER")
  done
}
# start_load TAG: one sequence driver per sidecar; sets DPIDS.
start_load() {
  DPIDS=()
  local j
  for j in 1 2 3; do
    start_driver "$1.d$j" "${DPORTS[j - 1]}" "${SPIDS[j - 1]}" "d$j" sequence "$FO_N" "$FO_M" "$FO_CONC"
    DPIDS+=("$RPID")
  done
}

failover() { # failover LEASE
  local lease=$1 tag="fo.lease$1" hub="fo_${1}"
  HOLD=$tag.done
  echo "== failover, --lease-seconds $lease" >&2
  start_three "$tag" "$hub" "$lease"
  # Renewal traffic: the three sidecars idle, no worker connected (nothing to claim): only
  # renewals (entity lease, heartbeat, instance and activity leases) reach the server.
  sleep 1
  local x0 x1 w=10
  x0=$(pg_xacts)
  sleep "$w"
  x1=$(pg_xacts)
  start_load "$tag"
  sleep "${FO_WARMUP:-6}"
  local victim=${SPIDS[2]} t0
  t0=$(now)
  kill -9 "$victim" "${DPIDS[2]}"
  python3 bench/cluster_check.py snapshot "$URL" "$hub" "${OWNERS[2]}" >"$work/$tag.leased" 2>"$work/$tag.leased.acts"
  local watch
  watch=$(python3 bench/cluster_check.py watch "$URL" "$hub" "$work/$tag.leased" "$t0" 60)
  local ok=1
  wait "${DPIDS[2]}" 2>/dev/null || true
  finish_drivers "${DPIDS[0]}" "${DPIDS[1]}" || ok=0
  wait_hub_done "$hub" 30 || ok=0
  local chk
  chk=$(python3 bench/cluster_check.py check "$URL" "$hub")
  stop_pids "${SPIDS[0]}" "${SPIDS[1]}"
  python3 bench/cluster_check.py record "$out/$tag.json" \
    "phase=failover" "lease_seconds=$lease" "n=$FO_N" "m=$FO_M" "concurrency=$FO_CONC" \
    "idle_window_seconds=$w" "idle_pg_xacts=$x0|$x1" "killed_owner=${OWNERS[2]}" \
    "activities_leased_at_kill=$(cut -f2 "$work/$tag.leased.acts")" "watch=$watch" "check=$chk" \
    "survivors_ok=$ok" -- "$work/$tag".d*.json || status=1
}

if [[ " $PHASES " == *" failover "* ]]; then
  failover 6
  failover 2
fi

# ---- 3. split brain ----

if [[ " $PHASES " == *" splitbrain "* ]]; then
  lease=${SB_LEASE:-2}
  tag="sb.lease$lease" hub="sb_$lease"
  HOLD=$tag.done
  echo "== split brain, --lease-seconds $lease: SIGSTOP one sidecar for $((3 * lease)) s" >&2
  start_three "$tag" "$hub" "$lease"
  start_load "$tag"
  sleep 5
  victim=${SPIDS[2]}
  kill -STOP "$victim"
  python3 bench/cluster_check.py snapshot "$URL" "$hub" "${OWNERS[2]}" >"$work/$tag.leased" 2>"$work/$tag.leased.acts"
  sleep $((3 * lease))
  # Taken over by now: the frozen sidecar's instances with another owner (or none).
  taken=$(psql "$URL" -XAtc "SELECT count(*) FROM $hub.instances WHERE lease_owner IS DISTINCT FROM '${OWNERS[2]}' AND instance_id IN (SELECT unnest(string_to_array('$(cut -f1 "$work/$tag.leased" | paste -sd,)', ',')))")
  kill -CONT "$victim"
  ok=1
  finish_drivers "${DPIDS[@]}" || ok=0
  wait_hub_done "$hub" 30 || ok=0
  lost_metric=$(metric "${HPORTS[2]}" duro_leases_lost_total)
  [[ $lost_metric == 0 ]] && lost_metric=$(metric "${HPORTS[2]}" duro_leases_lost)
  lost_log=$(grep -c "lease lost" "$work/$tag.s3.log" || true)
  act_lost_log=$(grep "activity leases lost" "$work/$tag.s3.log" | grep -o 'activities=[0-9]*' | awk -F= '{s += $2} END {print s + 0}') || true
  others_lost=$(($(grep -c "lease lost" "$work/$tag.s1.log" || true) + $(grep -c "lease lost" "$work/$tag.s2.log" || true)))
  chk=$(python3 bench/cluster_check.py check "$URL" "$hub")
  stop_pids "${SPIDS[@]}"
  python3 bench/cluster_check.py record "$out/$tag.json" \
    "phase=splitbrain" "lease_seconds=$lease" "frozen_seconds=$((3 * lease))" "n=$FO_N" "m=$FO_M" \
    "concurrency=$FO_CONC" "frozen_owner=${OWNERS[2]}" "leased_at_freeze=$(wc -l <"$work/$tag.leased")" \
    "activities_leased_at_freeze=$(cut -f2 "$work/$tag.leased.acts")" "taken_over_while_frozen=$taken" \
    "lease_lost_log_lines=$lost_log" "duro_leases_lost=$lost_metric" "activity_leases_lost=${act_lost_log:-0}" \
    "lease_lost_log_lines_others=$others_lost" "check=$chk" "drivers_ok=$ok" -- "$work/$tag".d*.json || status=1
  mkdir -p "$out/logs"
  grep -h "WARN\|ERROR\|lease lost" "$work/$tag".s*.log | head -50 >"$out/logs/$tag.txt" || true
fi

# ---- report ----

machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
md=bench/results/cluster-$(date -u +%Y-%m-%d).md
python3 bench/cluster_check.py report "$out" "$md" "machine=$machine" "commit=$commit" \
  "postgres=$PGVER ($PGSET)" "date=$(date -u '+%Y-%m-%d %H:%M UTC')" "load=$(cut -d' ' -f1-3 /proc/loadavg)"
echo "== wrote $md" >&2
exit $status
