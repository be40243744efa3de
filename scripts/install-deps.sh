#!/usr/bin/env bash
# Installs what the checks need and a fresh Debian 12 machine lacks; idempotent and quiet when
# everything is present. Root uses apt-get directly; others need sudo.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(nginx-light libnginx-mod-nchan)
command -v perf >/dev/null || missing+=(linux-perf)
# Postgres: server binaries for scripts/postgres.sh's throwaway clusters, psql/pg_dump for tests.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The nginx package may start a system nginx on port 80; the benchmark runs its own.
  as_root systemctl stop nginx >/dev/null 2>&1 || as_root nginx -s stop >/dev/null 2>&1 || true
  # Likewise the postgresql package's system cluster: the tests start throwaway ones.
  as_root systemctl stop postgresql >/dev/null 2>&1 || true
fi

cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
