#!/usr/bin/env bash
# Starts Duro + the fake Twilio + the phone-verification app (worker and front end).
# Ctrl-C stops all three. Ports: Duro gRPC 4001, Duro HTTP 7071, fake Twilio 8099, app 8080
# (override with DURO_PORT, DURO_HTTP_PORT, TWILIO_PORT, APP_PORT; SKIP_BUILD=1 skips cargo build).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
DURO_PORT="${DURO_PORT:-4001}"
DURO_HTTP_PORT="${DURO_HTTP_PORT:-7071}"
TWILIO_PORT="${TWILIO_PORT:-8099}"
APP_PORT="${APP_PORT:-8080}"

if [[ -z "${SKIP_BUILD:-}" ]]; then
  (cd "$root" && cargo build -q -p duro)
  (cd "$here" && cargo build -q --bins)
fi

data="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT INT TERM

"$CARGO_TARGET_DIR/debug/duro" --listen "127.0.0.1:$DURO_PORT" --http-listen "127.0.0.1:$DURO_HTTP_PORT" \
  --db "$data/duro.db" --log-level warn --http-allow 127.0.0.1 &
pids+=($!)

export TWILIO_ACCOUNT_SID="${TWILIO_ACCOUNT_SID:-ACtest}"
export TWILIO_AUTH_TOKEN="${TWILIO_AUTH_TOKEN:-secret}"
export TWILIO_FROM="${TWILIO_FROM:-+15550000000}"
if [[ -z "${TWILIO_BASE_URL:-}" ]]; then
  "$CARGO_TARGET_DIR/debug/fake_twilio" "127.0.0.1:$TWILIO_PORT" &
  pids+=($!)
  export TWILIO_BASE_URL="http://127.0.0.1:$TWILIO_PORT"
fi

sleep 1
DURO_ADDRESS="http://127.0.0.1:$DURO_PORT" DURO_HTTP_URL="http://127.0.0.1:$DURO_HTTP_PORT" \
  LISTEN="127.0.0.1:$APP_PORT" "$CARGO_TARGET_DIR/debug/phone-verification" &
pids+=($!)

echo "app: http://127.0.0.1:$APP_PORT   SMS sent: $TWILIO_BASE_URL/_test/messages (fake Twilio)"
wait -n "${pids[@]}"
