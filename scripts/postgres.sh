#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and benchmarks (loopback only, trust auth).
#
#   eval "$(scripts/postgres.sh start)"   # exports PGTMP and DATABASE_URL (also printed)
#   cargo nextest run ...                 # DATABASE_URL=postgres://postgres@127.0.0.1:<port>/postgres
#   scripts/postgres.sh stop "$PGTMP"     # stops the cluster and deletes its directory
#   scripts/postgres.sh restart "$PGTMP"  # a fast restart on the same port (for tests)
#
# By default fsync, synchronous_commit and full_page_writes are off (tests only). POSTGRES_DURABLE=1
# keeps Postgres's durable defaults (the benchmarks measure writers with fsync on).
# Uses the newest server binaries under /usr/lib/postgresql/*/bin (Debian's `postgresql`
# package; PGBIN=DIR picks others). Postgres refuses to run as root, so as root initdb and pg_ctl
# run as the `postgres` user (created if missing) through `runuser`.
set -euo pipefail

find_pgbin() {
  if [ -n "${PGBIN:-}" ]; then echo "$PGBIN"; return; fi
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$dir" ] || [ ! -x "$dir/initdb" ]; then
    echo "postgres.sh: no PostgreSQL server binaries found (install Debian's postgresql package, or set PGBIN)" >&2
    exit 1
  fi
  echo "$dir"
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local pgbin dir port settings
  pgbin=$(find_pgbin)
  if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin postgres
  fi
  dir=$(mktemp -d "${TMPDIR:-/tmp}/changefeed-pg.XXXXXX")
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
  as_pg "$pgbin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C --no-sync \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1; }
  settings="-c listen_addresses=127.0.0.1 -c max_connections=300"
  if [ "${POSTGRES_DURABLE:-0}" != 1 ]; then
    settings="$settings -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  for _ in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 40000))
    port_free "$port" || continue
    if as_pg "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
      -o "-p $port -k $dir $settings" start >/dev/null; then
      echo "export PGTMP=$dir"
      echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$port/postgres"
      return 0
    fi
  done
  cat "$dir/server.log" >&2
  rm -rf "$dir"
  exit 1
}

stop() {
  local dir=${1:?usage: scripts/postgres.sh stop <PGTMP>} pgbin
  pgbin=$(find_pgbin)
  [ -d "$dir/data" ] || { echo "postgres.sh: $dir is not a cluster made by postgres.sh start" >&2; exit 1; }
  as_pg "$pgbin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}

restart() {
  local dir=${1:?usage: scripts/postgres.sh restart <PGTMP>} pgbin
  pgbin=$(find_pgbin)
  as_pg "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 -m fast restart >/dev/null
}

case "${1:-}" in
  start) start ;;
  stop) shift; stop "$@" ;;
  restart) shift; restart "$@" ;;
  *) echo "usage: scripts/postgres.sh start | stop <PGTMP> | restart <PGTMP>" >&2; exit 2 ;;
esac
