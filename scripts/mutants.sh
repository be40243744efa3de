#!/usr/bin/env bash
# Mutation testing (cargo-mutants), a long run that is not part of CI: every mutant of the
# protocol core must be caught by the core's own tests, and every mutant of the server's stream
# driver by the server's tests.
#
#   scripts/mutants.sh                 # both sections
#   scripts/mutants.sh core            # only the core
#   scripts/mutants.sh stream          # only server/src/stream.rs (server and end-to-end tests)
#   MUTANTS_FILES="core/src/wire.rs core/src/event.rs" scripts/mutants.sh core   # some files
#   MUTANTS_JOBS=2 scripts/mutants.sh  # parallel builds (each needs its own copy of the tree)
#   MUTANTS_ARGS="--re head_at_open" scripts/mutants.sh stream   # more cargo-mutants flags
#   MUTANTS_ARGS=--in-place scripts/mutants.sh stream   # mutate this tree, reuse its target/
#
# Each mutant is built in a scratch copy of the tree (the source tree is never touched) and tested:
# the core with the shared `fast` profile and the core's own tests, property tests at
# PROPTEST_CASES=512 cases (override with PROPTEST_CASES), about 15–30 s per mutant on two cores, so
# the core section (about 530 mutants) takes two to four hours; the stream section (about 50
# mutants) with the dev profile in about half an hour, most of it the first build. Results go to
# target/mutants/<section>/mutants.out/ (caught.txt, missed.txt, timeout.txt, unviable.txt); a
# summary per file is printed at the end. Equivalent mutants (no test can tell them apart) are
# excluded in .cargo/mutants.toml, each with its reason.
#
# The score is caught / (caught + missed + timeout); unviable mutants (they do not compile)
# do not count. The goal is at least 95 % for each section.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo mutants --version >/dev/null 2>&1; then
  echo "installing cargo-mutants"
  cargo install cargo-mutants --locked
fi

sections=${1:-"core stream"}
jobs=${MUTANTS_JOBS:-1}
export PROPTEST_CASES=${PROPTEST_CASES:-512}
out_root=target/mutants
mkdir -p "$out_root"

# Prints caught / missed / timeout / unviable per file and the score, from one run's output.
summarise() {
  local dir=$1/mutants.out
  echo "file caught missed timeout unviable score"
  for file in $(cat "$dir"/{caught,missed,timeout,unviable}.txt 2>/dev/null | cut -d: -f1 | sort -u); do
    local c m t u
    c=$(grep -c "^$file:" "$dir/caught.txt" || true)
    m=$(grep -c "^$file:" "$dir/missed.txt" || true)
    t=$(grep -c "^$file:" "$dir/timeout.txt" || true)
    u=$(grep -c "^$file:" "$dir/unviable.txt" || true)
    awk -v f="$file" -v c="$c" -v m="$m" -v t="$t" -v u="$u" \
      'BEGIN { v = c + m + t; printf "%s %d %d %d %d %s\n", f, c, m, t, u, v ? sprintf("%.1f%%", 100 * c / v) : "-" }'
  done
  local c m t u
  c=$(wc -l <"$dir/caught.txt"); m=$(wc -l <"$dir/missed.txt")
  t=$(wc -l <"$dir/timeout.txt"); u=$(wc -l <"$dir/unviable.txt")
  awk -v c="$c" -v m="$m" -v t="$t" -v u="$u" \
    'BEGIN { v = c + m + t; printf "total %d %d %d %d %s\n", c, m, t, u, v ? sprintf("%.1f%%", 100 * c / v) : "-" }'
  if [ -s "$dir/missed.txt" ]; then
    echo "missed:"
    sed 's/^/  /' "$dir/missed.txt"
  fi
}

run() {
  local name=$1 profile=$2
  shift 2
  local status=0
  echo "==> mutants: $name"
  # A fresh output directory, so the summary never reports an earlier run.
  rm -rf "${out_root:?}/$name"
  local parallel=()
  if [ "$jobs" != 1 ]; then parallel=(-j "$jobs"); fi
  # shellcheck disable=SC2086 # MUTANTS_ARGS is a list of flags
  cargo mutants --profile "$profile" "${parallel[@]}" --timeout 120 --build-timeout 900 \
    -o "$out_root/$name" "$@" ${MUTANTS_ARGS:-} || status=$?
  # cargo-mutants exits 2 when mutants were missed, 3 on timeouts: report, then fail at the end.
  summarise "$out_root/$name" | column -t
  return "$status"
}

failed=0
for section in $sections; do
  case $section in
    core)
      files=()
      for file in ${MUTANTS_FILES:-}; do files+=(-f "$file"); done
      run core fast -p changefeed-core "${files[@]}" || failed=1
      ;;
    stream)
      if [ ! -f server/src/stream.rs ]; then
        echo "==> mutants: stream skipped: server/src/stream.rs does not exist in this tree"
        continue
      fi
      # The server's unit tests and the end-to-end tests (real HTTP, SQLite) that drive streams:
      # opening (grants, sealed ids, resume), coalescing, slow clients, lifecycle, metrics. The
      # dev profile without debug info: a mutant of the server rebuilds every test crate that
      # links it, about 15 s each here against minutes at the `fast` profile's opt-level.
      selection=(--lib --test server_acceptance --test server_auth --test server_sealed_ids
        --test server_resume --test server_first_frame --test server_slow_client
        --test server_lifecycle --test server_metrics_text)
      export CARGO_PROFILE_DEV_DEBUG=0
      # cargo-mutants' own baseline builds only the mutated package, which lacks the end-to-end
      # tests: run the same selection unmutated first, and stop if it fails.
      echo "==> mutants: stream baseline"
      cargo nextest run -p changefeed -p changefeed-tests "${selection[@]}"
      cargo_args=()
      for arg in "${selection[@]}"; do cargo_args+=(-C "$arg"); done
      run stream dev --baseline skip --test-tool nextest -p changefeed -f server/src/stream.rs \
        --test-package changefeed --test-package changefeed-tests "${cargo_args[@]}" || failed=1
      ;;
    *)
      echo "unknown section $section (core, stream)" >&2
      exit 2
      ;;
  esac
done
exit "$failed"
