#!/usr/bin/env bash
# Starts the phone-verification app (worker and front end) and the fake Twilio, on a Duro:
# the one already running on DURO_PORT (default 4001, the README's quick start) when its
# HTTP API answers on DURO_HTTP_PORT (default 7071), else a Duro of its own (on free ports
# if those are taken). Fake Twilio 8099 and app 8080, or the next free ports. Ctrl-C stops
# what it started. Override with DURO_PORT, DURO_HTTP_PORT, TWILIO_PORT, APP_PORT;
# SKIP_BUILD=1 skips cargo build. A failure is one `error:` line and exit code 1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
DURO_PORT="${DURO_PORT:-4001}"
DURO_HTTP_PORT="${DURO_HTTP_PORT:-7071}"
TWILIO_PORT="${TWILIO_PORT:-8099}"
APP_PORT="${APP_PORT:-8080}"

die() { echo "error: $*" >&2; exit 1; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { # the first port from $1 on that nothing listens on
  local p=$1
  while port_open "$p"; do p=$((p + 1)); done
  echo "$p"
}
is_duro_http() { # Duro's management API answers its OpenAPI document
  local body
  body=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET /runtime/webhooks/durabletask/openapi.json HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3 && timeout 3 cat <&3) 2>/dev/null || true)
  [[ "$body" == *"HTTP/1."*" 200"* && "$body" == *durabletask* ]]
}

data="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until 127.0.0.1:$2 accepts, or fails with the last error line of process $1's log $3.
wait_for() { # wait_for PID PORT LOG WHAT
  local i
  for i in $(seq 1 200); do
    port_open "$2" && return 0
    if ! kill -0 "$1" 2>/dev/null; then
      local why
      why=$(grep -E '^error|"level":"ERROR"' "$3" | tail -n1 || true)
      why=${why:-$(tail -n1 "$3")}
      die "$4 did not start: ${why#error: }"
    fi
    sleep 0.05
  done
  die "$4 did not listen on 127.0.0.1:$2 within 10 s (log: $(tail -n1 "$3"))"
}

if [[ -z "${SKIP_BUILD:-}" ]]; then
  (cd "$root" && cargo build -q -p duro) || die "cannot build duro (cargo build -p duro)"
  (cd "$here" && cargo build -q --bins) || die "cannot build the sample (cargo build --bins in $here)"
fi

if port_open "$DURO_PORT" && is_duro_http "$DURO_HTTP_PORT"; then
  echo "using the Duro already running on 127.0.0.1:$DURO_PORT (HTTP API 127.0.0.1:$DURO_HTTP_PORT)"
else
  if port_open "$DURO_PORT"; then
    wanted=$DURO_PORT
    DURO_PORT=$(free_port $((DURO_PORT + 1)))
    echo "note: 127.0.0.1:$wanted is taken by something that is not a Duro; starting a Duro on $DURO_PORT"
  fi
  if port_open "$DURO_HTTP_PORT"; then
    DURO_HTTP_PORT=$(free_port $((DURO_HTTP_PORT + 1)))
  fi
  "$CARGO_TARGET_DIR/debug/duro" --listen "127.0.0.1:$DURO_PORT" --http-listen "127.0.0.1:$DURO_HTTP_PORT" \
    --db "$data/duro.db" --log-level warn --http-allow 127.0.0.1 2>"$data/duro.log" &
  pids+=($!)
  wait_for "$!" "$DURO_PORT" "$data/duro.log" "duro"
  echo "started a Duro for this sample on 127.0.0.1:$DURO_PORT (HTTP API 127.0.0.1:$DURO_HTTP_PORT; stops with it)"
fi

export TWILIO_ACCOUNT_SID="${TWILIO_ACCOUNT_SID:-ACtest}"
export TWILIO_AUTH_TOKEN="${TWILIO_AUTH_TOKEN:-secret}"
export TWILIO_FROM="${TWILIO_FROM:-+15550000000}"
if [[ -z "${TWILIO_BASE_URL:-}" ]]; then
  TWILIO_PORT=$(free_port "$TWILIO_PORT")
  "$CARGO_TARGET_DIR/debug/fake_twilio" "127.0.0.1:$TWILIO_PORT" 2> >(tee "$data/twilio.log" >&2) &
  pids+=($!)
  wait_for "$!" "$TWILIO_PORT" "$data/twilio.log" "the fake Twilio"
  export TWILIO_BASE_URL="http://127.0.0.1:$TWILIO_PORT"
fi

APP_PORT=$(free_port "$APP_PORT")
DURO_ADDRESS="http://127.0.0.1:$DURO_PORT" DURO_HTTP_URL="http://127.0.0.1:$DURO_HTTP_PORT" \
  LISTEN="127.0.0.1:$APP_PORT" "$CARGO_TARGET_DIR/debug/phone-verification" 2> >(tee "$data/app.log" >&2) &
pids+=($!)
wait_for "$!" "$APP_PORT" "$data/app.log" "the app"

echo "app: http://127.0.0.1:$APP_PORT   SMS sent: $TWILIO_BASE_URL/_test/messages (fake Twilio)"
# Until Ctrl-C, or until one of them ends (then say which, and stop the others).
set +e
wait -n "${pids[@]}"
code=$?
set -e
die "a process of the sample exited (code $code); its log is above"
