#!/usr/bin/env bash
# Fuzz smoke test: builds every cargo-fuzz target of fuzz/ on stable Rust (no sanitizer) and
# runs each for a short fixed time over a scratch copy of its committed corpus (fuzz/corpus/),
# so the tree stays clean. Fails if any target crashes; prints executions per target.
#
#   FUZZ_SECONDS=20   seconds per target (default 20)
#   FUZZ_TARGETS="sse_parser cursor_query"   a subset (default: every target)
#
# A crashing input is kept in fuzz/artifacts/<target>/ (git-ignored); reproduce it with
#   cd fuzz && cargo fuzz run -s none <target> artifacts/<target>/crash-…
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd fuzz
# cargo-fuzz finds its binaries under fuzz/target; an inherited target dir would hide them.
unset CARGO_TARGET_DIR
cargo fuzz build -s none

targets=${FUZZ_TARGETS:-$(cargo fuzz list)}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
summary=()
for target in $targets; do
  corpus="$scratch/corpus/$target"
  mkdir -p "$corpus"
  if [ -d "corpus/$target" ]; then
    cp -R "corpus/$target/." "$corpus/"
  fi
  log="$scratch/$target.log"
  echo "==> $target: ${seconds}s over $(find "$corpus" -type f | wc -l) corpus inputs"
  status=0
  cargo fuzz run -s none "$target" "$corpus" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
  if [ -z "$runs" ]; then
    runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
  fi
  runs=${runs:-?}
  if [ "$status" -ne 0 ]; then
    echo "$target FAILED (exit $status) after ${runs} executions; the end of its log:" >&2
    tail -n 60 "$log" >&2
    failed+=("$target")
    summary+=("$target: FAILED after $runs executions")
  else
    summary+=("$target: $runs executions in ${seconds}s")
  fi
done

echo "fuzz smoke summary:"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz targets crashed: ${failed[*]}" >&2
  exit 1
fi
