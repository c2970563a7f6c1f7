#!/usr/bin/env bash
# Installs dependencies, builds @duro/sdk with tsc and runs its tests (node --test) against the real sidecar.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
[ -x "${DURO_BIN:-$REPO/target/debug/duro}" ] || (cd "$REPO" && cargo build -p duro)
cd "$HERE"
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
npx tsc -p tsconfig.json
exec node --test --test-concurrency=1 test/*.test.mjs
