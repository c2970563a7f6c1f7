#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests of the PostgreSQL store (one server for the whole
# run; every test takes a task hub of its own in it).
#
#   eval "$(bash scripts/pg.sh start DIR)"   # prints: export DURO_TEST_PG_URL=postgres://duro@127.0.0.1:PORT/postgres
#   bash scripts/pg.sh stop DIR
#
# start: installs Debian's `postgresql` (apt-get, non-interactive) when no
# /usr/lib/postgresql/*/bin/initdb exists, creates a cluster in DIR/data (user `duro`, trust
# authentication, so loopback only) and starts it on a free loopback port with fsync off and
# max_connections 300. PostgreSQL refuses to run as root, so as root the server runs as
# `nobody` (setpriv), as testing/duro-testkit does. Only the export line goes to stdout.
# stop: stops that server (fast shutdown) and deletes DIR/data; the log DIR/server.log stays.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR | stop DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
cmd=$1 dir=$2

NOBODY=65534
as_server() { # as_server PROGRAM ARGS...: runs a server program as an unprivileged user
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid=$NOBODY --regid=$NOBODY --clear-groups -- "$@"
  else
    "$@"
  fi
}

bin_dir() { # the newest /usr/lib/postgresql/<version>/bin with initdb, or nothing
  local newest
  newest=$(printf '%s\n' /usr/lib/postgresql/*/bin/initdb | grep -v '\*' | sort -V | tail -n1 || true)
  [ -n "$newest" ] && dirname "$newest"
  return 0
}

install_postgres() {
  echo "pg.sh: PostgreSQL is not installed; installing Debian's postgresql" >&2
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo > /dev/null || {
      echo "pg.sh: apt-get install postgresql needs root (no sudo here); install it, or set DURO_TEST_PG_URL" >&2
      exit 1
    }
    sudo=(sudo -n)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql > /dev/null 2>&1 || {
    # A fresh image has no package lists yet.
    "${sudo[@]}" apt-get update -q > /dev/null
    "${sudo[@]}" apt-get install -y -q --no-install-recommends postgresql > /dev/null
  }
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop() {
  local bin
  bin=$(bin_dir)
  if [ -n "$bin" ] && [ -f "$dir/data/postmaster.pid" ]; then
    as_server "$bin/pg_ctl" stop -m fast -w -D "$dir/data" > /dev/null 2>&1 || true
  fi
  rm -rf "$dir/data"
}

start() {
  local bin port
  bin=$(bin_dir)
  if [ -z "$bin" ]; then
    install_postgres
    bin=$(bin_dir)
    [ -n "$bin" ] || {
      echo "pg.sh: no /usr/lib/postgresql/*/bin/initdb after installing postgresql" >&2
      exit 1
    }
  fi
  stop # a server left in DIR by an earlier run
  mkdir -p "$dir/data"
  if [ "$(id -u)" = 0 ]; then
    # The server's user must reach DIR and own its data directory.
    chmod 755 "$dir"
    chown "$NOBODY:$NOBODY" "$dir" "$dir/data"
    as_server test -w "$dir/data" || {
      echo "pg.sh: user nobody cannot reach $dir (a parent directory is not searchable for others); use a directory under /tmp" >&2
      exit 1
    }
  fi
  as_server "$bin/initdb" -A trust -U duro -E UTF8 --locale=C.UTF-8 --no-sync -D "$dir/data" > "$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    exit 1
  }
  port=$(free_port)
  if ! as_server "$bin/pg_ctl" start -w -t 60 -D "$dir/data" -l "$dir/server.log" \
    -o "-p $port -h 127.0.0.1 -k $dir/data -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
    > /dev/null; then
    echo "pg.sh: the server did not start; its log:" >&2
    cat "$dir/server.log" >&2 || true
    exit 1
  fi
  echo "pg.sh: PostgreSQL ($(basename "$(dirname "$bin")")) serves 127.0.0.1:$port, data in $dir/data" >&2
  echo "export DURO_TEST_PG_URL=postgres://duro@127.0.0.1:$port/postgres"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
