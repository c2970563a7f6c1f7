#!/usr/bin/env bash
# Dashboard list page with 10,000 instances: seeds them through the HTTP management API (no
# worker: they stay Pending), then measures the list page's server time on loopback (request
# sent -> last byte, 30 requests after 3 warm-ups) for the default page, the largest page, a
# filtered page and a deep page, and, when Debian's chromium and tests/dashboard's npm packages
# are there, the browser's first contentful paint of the list page.
# Usage: bash bench/dashboard.sh [instances]   (DURO_BIN=... to use a given binary)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-10000}"
if [ -z "${DURO_BIN:-}" ]; then
  cargo build --release -p duro
  DURO_BIN="$PWD/target/release/duro"
fi
work=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
GRPC=$(port); HTTP=$(port)
"$DURO_BIN" --db "$work/d.db" --listen "127.0.0.1:$GRPC" --http-listen "127.0.0.1:$HTTP" --log-level warn &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$work"' EXIT
python3 - "$HTTP" "$N" <<'PY'
import http.client, statistics, sys, threading, time
port, n = int(sys.argv[1]), int(sys.argv[2])
for _ in range(300):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5); c.request("GET", "/dashboard"); c.getresponse().read(); break
    except OSError:
        time.sleep(0.1)
t0 = time.time()
def seed(k):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(k, n, 8):
        c.request("POST", f"/runtime/webhooks/durabletask/orchestrators/Bench{i % 7}/bench-{i:05d}", body=b'{"n": %d}' % i,
                  headers={"content-type": "application/json"})
        r = c.getresponse(); r.read()
        assert r.status == 202, r.status
threads = [threading.Thread(target=seed, args=(k,)) for k in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
print(f"seeded {n} instances in {time.time() - t0:.1f} s")
c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
def timed(path):
    t = time.perf_counter(); c.request("GET", path); r = c.getresponse(); body = r.read()
    assert r.status == 200, (path, r.status)
    return (time.perf_counter() - t) * 1000, len(body)
# The cursor of a deep page: the 5,000th newest instance.
deep = f"/dashboard?size=200"
for _ in range(24):
    c.request("GET", deep); body = c.getresponse().read().decode()
    if 'rel="next"' not in body: break
    nxt = body.split('rel="next" href="')[1].split('"')[0].replace("&amp;", "&")
    deep = nxt
print(f"{'page':<48} {'median ms':>9} {'p95 ms':>7} {'max ms':>7} {'bytes':>7}")
for path in ["/dashboard", "/dashboard?size=200", "/dashboard?status=Pending&name=Bench3&prefix=bench-4", deep, f"/dashboard/instances/bench-{n // 2:05d}", "/dashboard/live"]:
    for _ in range(3): timed(path)
    runs = [timed(path) for _ in range(30)]
    ms = sorted(r[0] for r in runs)
    label = path if len(path) <= 48 else path[:45] + "..."
    print(f"{label:<48} {statistics.median(ms):9.1f} {ms[int(len(ms) * .95) - 1]:7.1f} {ms[-1]:7.1f} {runs[0][1]:7d}")
PY
CHROMIUM="${CHROMIUM_BIN:-$(command -v chromium || true)}"
if [ -n "$CHROMIUM" ] && [ -d tests/dashboard/node_modules/playwright-core ]; then
  # The entities page (a few lines of text, same stylesheet and script) is the browser's own baseline.
  CHROMIUM_BIN="$CHROMIUM" node tests/dashboard/paint.mjs "http://127.0.0.1:$HTTP/dashboard" \
    "http://127.0.0.1:$HTTP/dashboard?size=200" "http://127.0.0.1:$HTTP/dashboard/entities"
else
  echo "(first paint not measured: needs chromium and 'npm ci' in tests/dashboard)"
fi
