#!/usr/bin/env bash
# Polyglot sample: one Duro, a TypeScript worker (activity greet_ts) and a Python worker
# (orchestrator polyglot, which calls greet_ts and makes a durable HTTP call) and, unless
# DURO_SAMPLE_RUST=0, a Rust worker (activity shout_rust, duro-sdk). Checks the output.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
DURO_BIN="${DURO_BIN:-$REPO/target/debug/duro}"
[ -x "$DURO_BIN" ] || (cd "$REPO" && cargo build -p duro)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q -e "$REPO/sdks/python"

(cd "$HERE/ts-worker" && { if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi; } >/dev/null && npx tsc -p tsconfig.json)

export DURO_SAMPLE_RUST="${DURO_SAMPLE_RUST:-1}"
if [ "$DURO_SAMPLE_RUST" = 1 ]; then
  # A member of the repository's workspace: built into its target directory.
  RUST_TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
  (cd "$REPO" && CARGO_TARGET_DIR="$RUST_TARGET" cargo build --quiet --locked -p polyglot-rust-worker)
fi

TMP="$(mktemp -d)"
PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export DURO_ADDRESS="127.0.0.1:$PORT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

"$DURO_BIN" --listen "$DURO_ADDRESS" --db "$TMP/duro.db" --http-listen off \
  --durable-http-default-poll-interval-ms 100 --http-allow 127.0.0.1 >"$TMP/duro.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

node "$HERE/ts-worker/dist/worker.js" &
PIDS+=($!)
if [ "$DURO_SAMPLE_RUST" = 1 ]; then
  "$RUST_TARGET/debug/polyglot-rust-worker" &
  PIDS+=($!)
fi

OUT="$("$VENV/bin/python" "$HERE/orchestrator.py")"
echo "output: $OUT"
"$VENV/bin/python" - "$OUT" <<'PY'
import json, os, sys
out = json.loads(sys.argv[1])
assert out["fromTypeScript"]["greeting"] == "Hello, Duro, from TypeScript!", out
assert out["fromTypeScript"]["runtime"].startswith("node v"), out
assert out["http"]["status"] == 200 and out["http"]["body"]["state"] == "done", out
if os.environ.get("DURO_SAMPLE_RUST") == "1":
    assert out["fromRust"] == {"shouted": "HELLO, DURO, FROM TYPESCRIPT!", "runtime": "rust"}, out
print("polyglot sample: OK")
PY
