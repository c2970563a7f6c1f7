# Helpers sourced by bench/run.sh and bench/smoke.sh (run from the repository root).

# free_port prints a loopback TCP port nobody listens on.
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return
    fi
  done
}

# start_sidecar KIND DIR PORT [ARGS...]: starts duro or dtgo on a fresh SQLite file in DIR; sets
# SIDECAR_PID. ARGS go to duro.
start_sidecar() {
  local kind=$1 dir=$2 port=$3
  case $kind in
    duro) "$DURO_BIN" --listen "127.0.0.1:$port" --db "$dir/duro.db" --log-level warn "${@:4}" 2>"$dir/sidecar.log" & ;;
    dtgo) bench/bin/dtgo-sidecar -listen "127.0.0.1:$port" -db "$dir/dtgo.db" 2>"$dir/sidecar.log" & ;;
    *) echo "unknown sidecar $kind" >&2; return 1 ;;
  esac
  SIDECAR_PID=$!
  wait_listening "$port" "$dir/sidecar.log"
}

# wait_listening PORT LOG: waits until $SIDECAR_PID listens on PORT; prints LOG and fails if it exits first.
wait_listening() {
  local port=$1 log=$2 i
  for i in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$SIDECAR_PID" 2>/dev/null; then break; fi
    sleep 0.05
  done
  echo "the sidecar did not start listening on $port:" >&2
  cat "$log" >&2
  return 1
}

stop_sidecar() {
  if [[ -n ${SIDECAR_PID:-} ]]; then
    kill "$SIDECAR_PID" 2>/dev/null || true
    wait "$SIDECAR_PID" 2>/dev/null || true
    SIDECAR_PID=
  fi
}

# build_bench builds the Go programs into bench/bin (modules come from the Go module proxy).
build_bench() {
  (cd bench && GOFLAGS="${GOFLAGS:--mod=mod}" go build -o bin/ "$@")
}

DURO_BIN=${DURO_BIN:-${CARGO_TARGET_DIR:-target}/release/duro}
