#!/usr/bin/env bash
# Checks, before anything is built, that the tools the test command needs are installed
# and new enough; prints one message naming everything missing and exits 1. Everything
# else (Python packages, npm packages, Go modules, kubeconform, and PostgreSQL with apt-get in
# scripts/pg.sh) the test command installs itself from the package registries.
#
#   Rust >= 1.89 ...... the sidecar, the Rust SDK, the samples
#   Python >= 3.10 .... the official `durabletask` SDK (compatibility suite, Python samples)
#   Node >= 20, npm ... the official `@microsoft/durabletask-js` SDK (TypeScript SDK, polyglot
#                       sample); that SDK declares Node >= 22, and the suites pass on 20 too
#   Go >= 1.23 ........ the benchmark smoke tests (durabletask-go) and kubeconform
#   git ............... the repository checks
set -uo pipefail
missing=()
version_ge() { # version_ge FOUND WANTED: dotted numeric comparison
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}
need() { # need NAME WANTED FOUND_VERSION HOW
  if [ -z "$3" ]; then
    missing+=("$1 >= $2, not found ($4)")
  elif ! version_ge "$3" "$2"; then
    missing+=("$1 >= $2, found $3 ($4)")
  fi
}
ver() { "$@" 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n1; }
need cargo 1.89 "$(ver cargo --version)" "install Rust with rustup"
need python3 3.10 "$(ver "${PYTHON:-python3}" --version)" "apt-get install python3 python3-venv"
if [ -n "$(ver "${PYTHON:-python3}" --version)" ] && ! "${PYTHON:-python3}" -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=("python3 venv module (apt-get install python3-venv)")
fi
need node 20 "$(ver node --version)" "install Node.js 22, e.g. apt-get install nodejs npm"
need npm 9 "$(ver npm --version)" "comes with Node.js (apt-get install npm)"
need go 1.23 "$(go env GOVERSION 2>/dev/null | grep -Eo '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n1)" "apt-get install golang-go, or go.dev"
need git 2.0 "$(ver git --version)" "apt-get install git"
if [ ${#missing[@]} -gt 0 ]; then
  list=$(printf '%s; ' "${missing[@]}")
  printf 'error: scripts/test.sh needs tools that are missing or too old: %s. Install them and run it again (README: Quick start).\n' \
    "${list%; }" >&2
  exit 1
fi
node_v=$(ver node --version)
if ! version_ge "$node_v" 22; then
  echo "note: Node $node_v: @microsoft/durabletask-js declares Node >= 22 (its tests here pass on 20)"
fi
echo "prerequisites: ok (cargo $(ver cargo --version), python $(ver "${PYTHON:-python3}" --version), node $node_v, go $(go env GOVERSION))"
