#!/usr/bin/env bash
# Schema-based fuzzing of the HTTP management API: Schemathesis generates requests from
# sidecar/openapi.json (valid and invalid ones) against a freshly started duro and fails on
# any 5xx answer. Run from the repository root:  bash tests/http/fuzz.sh
#
# Budget: FUZZ_MAX_EXAMPLES test cases per operation (default 30), each request at most 10 s.
# Uses target/debug/duro (or $DURO_BIN; built if missing) on free loopback ports, its own
# temporary database, and stops it at the end. Installs Schemathesis into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-30}
PY=${PYTHON:-python3}
BIN=${DURO_BIN:-$PWD/target/debug/duro}

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"

if [ ! -x "$BIN" ]; then
  cargo build -p duro
fi

free_port() {
  .venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
GRPC_PORT=$(free_port)
HTTP_PORT=$(free_port)
WORK=$(mktemp -d)
PID=

cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Short waits keep `timeout` cases fast; open API on loopback (no key) so every handler runs.
"$BIN" --listen "127.0.0.1:$GRPC_PORT" --db "$WORK/duro.db" \
  --http-listen "127.0.0.1:$HTTP_PORT" --http-max-wait-seconds 1 --http-max-body-bytes 65536 \
  --log-level warn >"$WORK/duro.log" 2>&1 &
PID=$!

BASE="http://127.0.0.1:$HTTP_PORT"
for _ in $(seq 1 200); do
  if .venv/bin/python -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
      "$BASE/runtime/webhooks/durabletask/openapi.json" 2>/dev/null; then
    break
  fi
  if ! kill -0 "$PID" 2>/dev/null; then
    echo "duro exited during start-up:" >&2
    cat "$WORK/duro.log" >&2
    exit 1
  fi
  sleep 0.1
done

status=0
# Run inside the temporary directory: Schemathesis keeps caches in its working directory.
ROOT=$PWD
(cd "$WORK" && "$ROOT/.venv/bin/schemathesis" run "$BASE/runtime/webhooks/durabletask/openapi.json" \
  --url "$BASE" \
  --checks not_a_server_error \
  --max-examples "$MAX_EXAMPLES" \
  --request-timeout 10 \
  --generation-database none \
  --no-color) \
  || status=$?

if ! kill -0 "$PID" 2>/dev/null; then
  echo "duro died during the fuzz run:" >&2
  cat "$WORK/duro.log" >&2
  exit 1
fi
if grep -q "panicked" "$WORK/duro.log"; then
  echo "duro logged a panic during the fuzz run:" >&2
  grep -B2 -A10 "panicked" "$WORK/duro.log" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "schemathesis found failures (exit $status); duro log tail:" >&2
  tail -n 40 "$WORK/duro.log" >&2
fi
exit "$status"
