#!/usr/bin/env bash
# The benchmark harness (the `bench/` crate, `changefeed-bench`): builds with the shared `fast`
# profile, starts its own Nchan peer (nginx on a loopback port) when installed, runs the
# scenarios and writes target/bench/results.md and target/bench/latency.svg.
#
#   scripts/bench.sh [latency|fanout|replay|idle|parser|postgres ...] [--quick]
#   target/fast/changefeed-bench --help     # every flag of the harness itself
#
# --quick scales every scenario down (latency at 20 / 100 subscribers, fan-out at 100 / 1,000
# over HTTP/1.1 and HTTP/2, a 100,000-row log, 1,000 idle streams over each; a few minutes in
# all); CI runs it, with no performance assertions. Without it: latency at 100 / 1,000, fan-out at
# 1,000 / 10,000, a 1,000,000-row log, 10,000 idle streams (several minutes).
#
# Environment: BENCH_PROFILE=release (instead of `fast`), BENCH_NCHAN=0 (skip the Nchan peer),
# BENCH_POSTGRES=0 (no Postgres cluster for the postgres scenario),
# BENCH_NCHAN_PUBLISHERS=N (concurrent publishers in the Nchan fan-out, default 1),
# BENCH_SERVER_ARGS="--flag value" (extra `changefeed serve` flags), BENCH_STRICT=1 (exit 1 when a
# measurement could not be taken), BENCH_PERF=1 (`perf record -g` each changefeed server into
# target/bench/work/perf-NAME.data). Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${BENCH_PROFILE:-fast}
out=target/bench
work=$out/work

# Many sockets per process: raise the fd limit as far as allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "fd limit: $(ulimit -n)"

rm -rf "$work"
mkdir -p "$work"

nginx_conf=""
pg_dir=""
cleanup() {
  local status=$?
  if [ -n "$pg_dir" ]; then scripts/postgres.sh stop "$pg_dir" || true; fi
  if [ -n "$nginx_conf" ] && [ -f "$work/nchan/nginx.pid" ]; then
    nginx -c "$nginx_conf" -p "$work/nchan" -s stop 2>/dev/null || true
    sleep 0.2
    pid=$(cat "$work/nchan/nginx.pid" 2>/dev/null || true)
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  fi
  # Processes the bench started (servers, sqlite3 writers), should it have died without
  # stopping them.
  if [ -f "$work/pids" ]; then
    while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$work/pids"
  fi
  if [ -n "${bench_pid:-}" ]; then kill "$bench_pid" 2>/dev/null || true; fi
  exit "$status"
}
trap cleanup EXIT INT TERM

echo "building (profile $profile)"
if [ "$profile" = fast ]; then
  # The same feature set as the nextest build, so CI reuses its compiled dependencies.
  cargo build --profile fast --workspace --bins --tests
else
  cargo build --profile "$profile" -p changefeed -p changefeed-bench --bins
fi
bench_bin="target/$profile/changefeed-bench"
[ -x "$bench_bin" ] || { echo "bench binary not found: $bench_bin" >&2; exit 1; }

# The Nchan peer.
nchan_args=()
if [ "${BENCH_NCHAN:-1}" != 0 ] && command -v nginx >/dev/null \
  && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
  # Two free ports: HTTP/1.1 and HTTP/2 (h2c with prior knowledge).
  ports=()
  for candidate in $(seq 18080 18180); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then ports+=("$candidate"); fi
    if [ "${#ports[@]}" -ge 2 ]; then break; fi
  done
  if [ "${#ports[@]}" -ge 2 ]; then
    port=${ports[0]}
    h2port=${ports[1]}
    mkdir -p "$work/nchan/logs"
    nginx_conf="$PWD/$work/nchan/nginx.conf"
    sed "s/@PORT@/$port/; s/@H2PORT@/$h2port/; s/@NOFILE@/$(ulimit -n)/" \
      scripts/nchan/nginx.conf.template >"$nginx_conf"
    if nginx -c "$nginx_conf" -p "$PWD/$work/nchan" 2>"$work/nchan/start.log"; then
      for _ in $(seq 50); do [ -s "$work/nchan/nginx.pid" ] && break; sleep 0.1; done
      nchan_args=(--nchan "127.0.0.1:$port" --nchan-pid "$work/nchan/nginx.pid"
        --nchan-h2 "127.0.0.1:$h2port")
      echo "Nchan peer: nginx on 127.0.0.1:$port (HTTP/2: $h2port)"
    else
      echo "Nchan peer not started: $(cat "$work/nchan/start.log")" >&2
      nginx_conf=""
    fi
  fi
else
  echo "Nchan peer skipped (nginx with the nchan module not installed, or BENCH_NCHAN=0)"
fi

# The Postgres peer rows: a throwaway cluster with Postgres's durable defaults (fsync on).
pg_args=()
if [ "${BENCH_POSTGRES:-1}" != 0 ] && pg_env=$(POSTGRES_DURABLE=1 scripts/postgres.sh start 2>"$work/postgres.log"); then
  pg_dir=$(printf '%s\n' "$pg_env" | sed -n 's/^export PGTMP=//p')
  pg_url=$(printf '%s\n' "$pg_env" | sed -n 's/^export DATABASE_URL=//p')
  pg_args=(--postgres "$pg_url")
  echo "Postgres for the postgres scenario: $pg_url (fsync on)"
else
  echo "Postgres scenario without a cluster (BENCH_POSTGRES=0, or: $(cat "$work/postgres.log" 2>/dev/null))"
fi

args=()
for arg in "$@"; do args+=("$arg"); done
started=$SECONDS
"$bench_bin" "${args[@]}" --server-bin "target/$profile/changefeed" \
  "${nchan_args[@]}" "${pg_args[@]}" --out "$out" --work "$work" &
bench_pid=$!
wait "$bench_pid"
bench_pid=""
echo "bench finished in $((SECONDS - started)) s; results in $out/results.md, chart in $out/latency.svg"
