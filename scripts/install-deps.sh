#!/usr/bin/env bash
# Installs what the checks need and a fresh Debian 12 machine lacks; idempotent and quiet when
# everything is present. Root uses apt-get directly; others need sudo.
#
# What it cannot install is Rust itself: it checks for a toolchain of at least the workspace's
# rust-version (installed with rustup, which also provides rustfmt and clippy) and stops with one
# line saying so. Everything else comes from Debian's packages, crates.io (cargo-nextest) and, when
# the system Node is older than the client tests need, PyPI (a pinned Node, see scripts/node.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

need_rust=$(sed -n 's/^rust-version = "\([0-9.]*\)"/\1/p' Cargo.toml | head -n 1)
have_rust=$(rustc --version 2>/dev/null | awk '{print $2}' || true)
if [ -z "$have_rust" ] || ! command -v cargo >/dev/null \
  || [ "$(printf '%s\n%s\n' "$need_rust" "${have_rust%%-*}" | sort -V | head -n 1)" != "$need_rust" ]; then
  echo "install-deps: Rust >= $need_rust is required (found: ${have_rust:-none}); install it with rustup (https://rustup.rs), e.g. 'rustup toolchain install stable', and make sure ~/.cargo/bin is on PATH" >&2
  exit 1
fi

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v cc >/dev/null || missing+=(gcc libc6-dev)          # linker and the bundled SQLite
[ -e /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)  # cargo's HTTPS
command -v sqlite3 >/dev/null || missing+=(sqlite3)
command -v tmux >/dev/null || missing+=(tmux)
command -v curl >/dev/null || missing+=(curl)                 # the CLI test runs the demo's curl line
command -v chromium >/dev/null || missing+=(chromium)
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(nginx-light libnginx-mod-nchan)
command -v perf >/dev/null || missing+=(linux-perf)
# Postgres: server binaries for scripts/postgres.sh's throwaway clusters, psql/pg_dump for tests.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v pg_dump >/dev/null || missing+=(postgresql-client)
# The real-client tests need Node >= 22.12; without one, scripts/node.sh installs Node from PyPI
# into a virtualenv, which needs python3 with venv.
if ! scripts/node.sh --check >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing+=(python3 python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The nginx package may start a system nginx on port 80; the benchmark runs its own.
  as_root systemctl stop nginx >/dev/null 2>&1 || as_root nginx -s stop >/dev/null 2>&1 || true
  # Likewise the postgresql package's system cluster: the tests start throwaway ones.
  as_root systemctl stop postgresql >/dev/null 2>&1 || true
fi
scripts/node.sh >/dev/null

cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
