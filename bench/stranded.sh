#!/usr/bin/env bash
# Stranded-event stress test (issue 13) with the official durabletask-go SDK: bench/stranded runs
# 1,000 orchestrations that each WaitForSingleEvent, 100 in flight, each event raised from a
# goroutine started by the instance's first orchestrator execution. RUNS runs (default 3) with one
# worker connection and RUNS with two, each on a fresh sidecar and SQLite file. Every instance must
# complete with the exact output within SETTLE (default 20s) of the last start; otherwise the run
# prints the stranded instances (id + status, and their inbox rows when sqlite3 is installed) and
# the script exits non-zero after all runs.
# Uses the release build (bench/smoke.sh builds it too). About 10 s when nothing strands; each run
# with stranded instances waits out SETTLE, so at most about 6 × (SETTLE + 5 s).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

RUNS=${RUNS:-3}
SETTLE=${SETTLE:-20s}
N=${N:-1000}

cargo build --release -p duro
build_bench ./stranded

work=$(mktemp -d)
trap 'stop_sidecar; rm -rf "$work"' EXIT

failed=0 summary=()
for workers in 1 2; do
  for run in $(seq "$RUNS"); do
    dir="$work/w$workers-r$run"
    mkdir -p "$dir"
    port=$(free_port)
    start_sidecar duro "$dir" "$port"
    label="w$workers-r$run"
    if bench/bin/stranded -addr "127.0.0.1:$port" -n "$N" -inflight 100 -workers "$workers" \
      -settle "$SETTLE" -label "$label" >"$dir/out.txt"; then
      status=ok
    else
      status=FAIL
      failed=$((failed + 1))
    fi
    head -1 "$dir/out.txt"
    if [[ $status == FAIL ]]; then
      sed -n '2,41p' "$dir/out.txt"
      lines=$(wc -l <"$dir/out.txt")
      if ((lines > 41)); then echo "  ... ($((lines - 41)) more lines)"; fi
      if command -v sqlite3 >/dev/null; then
        echo "  inbox rows of RUNNING instances (instance_id, rows):"
        sqlite3 "$dir/duro.db" "SELECT '    ' || i.instance_id || ' ' || count(*) FROM inbox i JOIN instances s ON s.instance_id = i.instance_id WHERE s.status = 0 GROUP BY i.instance_id ORDER BY i.instance_id LIMIT 10" 2>&1 || true
      fi
    fi
    summary+=("$status $label: $(head -1 "$dir/out.txt" | grep -o 'completed=[0-9]* stranded=[0-9]*')")
    stop_sidecar
  done
done
printf '%s\n' "${summary[@]}"
echo "stranded-events: $((2 * RUNS - failed)) of $((2 * RUNS)) runs passed"
[[ $failed == 0 ]]
