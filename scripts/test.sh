#!/usr/bin/env bash
# Every check the project has, as CI runs it: installs what is missing, then runs formatting,
# lints, the dependency boundaries of core and the client, all tests, the simulation seeds, the
# fuzz smoke, the benchmark harness in --quick mode and the real-client tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
started=$SECONDS

timings=()
last_step=""
last_start=$SECONDS
step() {
  if [ -n "$last_step" ]; then timings+=("$(printf '%5ds  %s' "$((SECONDS - last_start))" "$last_step")"); fi
  last_step=$*
  last_start=$SECONDS
  printf '\n==> %s (%ds)\n' "$*" "$((SECONDS - started))"
}

step "toolchain and system packages"
scripts/install-deps.sh

step "cargo fmt --check (workspace and the fuzz crate outside it)"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)

step "clippy -D warnings"
cargo clippy --workspace --all-targets --profile fast -- -D warnings

step "core stays sans-IO (no IO or async crates among its normal dependencies)"
forbidden=$(cargo tree -p changefeed-core -e normal --prefix none \
  | awk '{print $1}' | grep -xE 'tokio|hyper|axum|sqlx|mio|rand|reqwest|futures|futures-util' | sort -u || true)
if [ -n "$forbidden" ]; then
  echo "core depends on: $forbidden" >&2
  exit 1
fi
echo "ok: $(cargo tree -p changefeed-core -e normal --prefix none | awk '{print $1}' | sort -u | tr '\n' ' ')"

step "the client crate depends on none of the server's crates"
forbidden=$(cargo tree -p changefeed-client -e normal --prefix none \
  | awk '{print $1}' \
  | grep -xE 'changefeed|changefeed-sim|sqlx|sqlx-core|libsqlite3-sys|axum|axum-core|clap|clap_builder|notify|tracing-subscriber|prometheus-client|tower' \
  | sort -u || true)
if [ -n "$forbidden" ]; then
  echo "changefeed-client depends on: $forbidden" >&2
  exit 1
fi
echo "ok: $(cargo tree -p changefeed-client -e normal --prefix none | awk '{print $1}' | sort -u | wc -l) crates, none of the server's"

step "throwaway Postgres for the Postgres tests (stopped on exit, also on failure)"
eval "$(scripts/postgres.sh start)"
trap 'scripts/postgres.sh stop "$PGTMP"' EXIT
# The tests read their own variable: DATABASE_URL would also become `changefeed serve`'s default.
export CHANGEFEED_TEST_POSTGRES=$DATABASE_URL
unset DATABASE_URL
echo "Postgres at $CHANGEFEED_TEST_POSTGRES"

step "tests (nextest, shared 'fast' profile)"
cargo nextest run --workspace --cargo-profile fast --profile ci

for extra in scripts/sim.sh scripts/fuzz-smoke.sh scripts/client-tests.sh; do
  if [ -x "$extra" ]; then
    step "$extra"
    "$extra"
  fi
done

if [ -x scripts/faults.sh ]; then
  step "scripts/faults.sh (one round of each fault, capped at 5 min)"
  FAULTS_ROUNDS=1 timeout 300 scripts/faults.sh
fi

if [ -x scripts/soak.sh ]; then
  step "scripts/soak.sh --ci (2 minutes: 1,000 streams, 1,000 writes/s, growth bounds)"
  timeout 600 scripts/soak.sh --ci
fi

if [ -x scripts/bench.sh ]; then
  step "benchmark harness (--quick, no performance assertions)"
  scripts/bench.sh --quick
fi

step "all checks passed in $((SECONDS - started))s"
printf '%s\n' "${timings[@]}"
# Disk is a CI limit too (a run once failed with "No space left on device").
echo "target dirs: $(du -sh target fuzz/target 2>/dev/null | awk '{printf "%s %s  ", $2, $1}')free: $(df -h . | awk 'NR==2 {print $4}')"
