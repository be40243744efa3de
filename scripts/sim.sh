#!/usr/bin/env bash
# The deterministic simulation (sim/): the real server and client on turmoil under seeded
# faults, the determinism proof and the planted-bug (mutant) checks.
#
#   scripts/sim.sh                        # CI: 200 seeds (100 fixed, 100 random; the base is printed)
#   SIM_SEEDS=10000 scripts/sim.sh        # a long exploration run
#   SIM_SEED=1234 scripts/sim.sh          # replay one seed (SIM_TRACE=1 prints its whole trace)
#   SIM_SEED_BASE=<n> scripts/sim.sh      # repeat a run's random seeds
#
# Needs --cfg tokio_unstable (turmoil then seeds tokio's RNG and forwards host panics), which
# .cargo/config.toml sets for every build of the workspace: the simulation shares the `fast`
# build with the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export SIM_SEEDS=${SIM_SEEDS:-200}

if [ -n "${SIM_SEED:-}" ]; then
  echo "sim: replaying seed $SIM_SEED"
else
  echo "sim: $SIM_SEEDS seeds per scenario"
fi
started=$SECONDS
# Built and run through the workspace (nextest's feature set), so it reuses the tests' build
# instead of compiling tokio and everything above it again for the sim crate's features alone.
run=(cargo nextest run --cargo-profile fast --workspace -E 'package(changefeed-sim)')
"${run[@]}" --no-run --cargo-quiet
built=$SECONDS
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
"${run[@]}" --cargo-quiet --hide-progress-bar --success-output final --failure-output final \
  --status-level fail --final-status-level fail >"$log" 2>&1 || status=$?
# The per-seed lines are noise on success; everything else (summaries, failures) is shown.
grep -v -E '^ *sim: (seed [0-9]+(: .*)?$|determinism of seed)' "$log" \
  | grep -E '^ *(sim: |thread |seed |replay with|failures:|FAIL|  +Summary)|^      ' || true
if [ "$status" != 0 ]; then
  echo "sim: FAILED: the seed and the replay command are above" >&2
  exit "$status"
fi
echo "sim: all passed (build $((built - started))s, tests $((SECONDS - built))s)"
