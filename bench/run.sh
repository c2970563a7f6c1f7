#!/usr/bin/env bash
# The whole comparison: builds Duro and the durabletask-go reference sidecar, runs every scenario
# against each (fresh SQLite file each time), and writes bench/results/*.json, bench/RESULTS.md and
# bench/results.svg. About 3½ minutes on 2 cores, plus the builds.
#
#   bash bench/run.sh                     # everything
#   SIDECARS=duro bash bench/run.sh       # one sidecar (the report shows "—" for the other)
#   RUNS="sequence fanout" bash bench/run.sh
#   RUNS="scale-c1 scale-c4 scale-c16 scale-c64 scale-w2 scale-w4" bash bench/run.sh   # the scaling runs alone
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

# name scenario n m concurrency sidecars [workers] — sized so that each run takes a few seconds to
# ~15 s on either sidecar (durabletask-go turns over one work item at a time). workers (default 1) is the
# driver's -workers: worker connections, each with its own SDK work-item listener. The scale-* runs
# repeat one workload on Duro with 1 to 64 orchestrations in flight, then with 2 and 4 worker
# connections (bench/RESULTS.md, "Scaling").
PLAN=(
  "sequence    sequence    400   5  32 dtgo,duro"
  "fanout      fanout      200  10  32 dtgo,duro"
  "timers      timers      300   3  32 dtgo,duro"
  "events      events      1000  0  32 dtgo,duro"
  "start-burst start-burst 1000  1  64 dtgo,duro"
  "latency     sequence    100   1   1 dtgo,duro"
  "waiting     waiting     10000 0  64 duro"
  "scale-c1    fanout      300  10   1 duro 1"
  "scale-c4    fanout      600  10   4 duro 1"
  "scale-c16   fanout      800  10  16 duro 1"
  "scale-c64   fanout      800  10  64 duro 1"
  "scale-w2    fanout      800  10  64 duro 2"
  "scale-w4    fanout      800  10  64 duro 4"
)
SIDECARS=${SIDECARS:-dtgo duro}
# Duro finishes the sizes above in 0.1-0.3 s, too short for a steady rate (ramp-up and the last
# stragglers dominate): it runs DURO_N_SCALE times as many orchestrations of the same workload
# (rates are per second, so the comparison holds; the scale-* and waiting runs keep their sizes).
DURO_N_SCALE=${DURO_N_SCALE:-5}
RUNS=${RUNS:-}

echo "== build" >&2
cargo build --release -p duro >&2
build_bench ./driver ./dtgo-sidecar ./report

load=$(cut -d' ' -f1-3 /proc/loadavg)
work=$(mktemp -d)
trap 'stop_sidecar; rm -rf "$work"' EXIT
cp "$DURO_BIN" "$work/duro" # a rebuild by someone else during the run must not swap the binary
DURO_BIN=$work/duro
mkdir -p bench/results
status=0
for line in "${PLAN[@]}"; do
  read -r name scenario n m conc who workers <<<"$line"
  workers=${workers:-1}
  if [[ -n $RUNS && " $RUNS " != *" $name "* ]]; then continue; fi
  for kind in $SIDECARS; do
    [[ ,$who, == *,$kind,* ]] || continue
    rm -f "bench/results/$name.$kind.json"
    runs_n=$n
    if [[ $kind == duro && $name != scale-* && $name != waiting ]]; then runs_n=$((n * DURO_N_SCALE)); fi
    dir="$work/$name.$kind"
    mkdir -p "$dir"
    port=$(free_port)
    start_sidecar "$kind" "$dir" "$port"
    echo "== $name on $kind (n=$runs_n m=$m concurrency=$conc workers=$workers)" >&2
    if ! bench/bin/driver -addr "127.0.0.1:$port" -sidecar "$kind" -sidecar-pid "$SIDECAR_PID" \
      -name "$name" -scenario "$scenario" -n "$runs_n" -m "$m" -concurrency "$conc" -workers "$workers" -timeout 3m \
      -out "bench/results/$name.$kind.json" >/dev/null; then
      echo "!! $name on $kind failed: see bench/results/$name.$kind.json" >&2
      status=1
    fi
    stop_sidecar
  done
done

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain -- sidecar proto 2>/dev/null) ]]; then commit="$commit (+ uncommitted changes)"; fi
machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
bench/bin/report -results bench/results -md bench/RESULTS.md -svg bench/results.svg -notes bench/NOTES.md \
  -date "$(date -u '+%Y-%m-%d %H:%M UTC')" -machine "$machine" -commit "$commit" -load "$load"
echo "== wrote bench/RESULTS.md and bench/results.svg" >&2
exit $status
