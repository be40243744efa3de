#!/usr/bin/env bash
# The deterministic simulation (sim/): the real server and client on turmoil under seeded
# faults, the determinism proof and the planted-bug (mutant) checks.
#
#   scripts/sim.sh                        # CI: seeds 0..SIM_SEEDS-1 (default 200)
#   SIM_SEEDS=10000 scripts/sim.sh        # a long exploration run
#   SIM_SEED=1234 scripts/sim.sh          # replay one seed (add SIM_TRACE=1 for its whole trace)
#
# Built with --cfg tokio_unstable (turmoil then seeds tokio's RNG and forwards host panics) in
# its own target directory, so the different RUSTFLAGS never invalidate the main build cache.
set -euo pipefail
cd "$(dirname "$0")/.."

export SIM_SEEDS=${SIM_SEEDS:-200}
export RUSTFLAGS="--cfg tokio_unstable"
export CARGO_TARGET_DIR=target/sim

if [ -n "${SIM_SEED:-}" ]; then
  echo "sim: replaying seed $SIM_SEED"
else
  echo "sim: seeds 0..$((SIM_SEEDS - 1))"
fi
started=$SECONDS
cargo build --profile fast -p changefeed-sim --tests --quiet
built=$SECONDS
cargo test --profile fast -p changefeed-sim -- --nocapture 2>&1 \
  | grep -E --line-buffered '^(sim: [0-9]+ seeds|sim: mutant|test |test result|thread |seed |replay with|  )' \
  || { echo "sim: FAILED (see the seed and replay command above)" >&2; exit 1; }
# grep hides the pipeline's status: check cargo's own.
if [ "${PIPESTATUS[0]}" != 0 ]; then
  echo "sim: FAILED (see the seed and replay command above)" >&2
  exit 1
fi
elapsed=$((SECONDS - built))
echo "sim: build $((built - started))s, tests ${elapsed}s"
