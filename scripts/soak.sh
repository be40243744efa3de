#!/usr/bin/env bash
# The soak: one `changefeed serve` on a fresh SQLite file, 1,000 live streams and 1,000 writes/s
# for 30 minutes, sampling the server's RSS, open fds and runtime tasks every minute; it fails
# when any grows beyond its bound after the warm-up (the first quarter), when they do not fall
# back after every stream closed, or when any stream missed or repeated an event (delivered must
# equal writes × streams). The table goes to target/soak/results.md.
#
#   scripts/soak.sh          # 30 minutes, 1,000 streams, 1,000 writes/s, a sample a minute
#   scripts/soak.sh --ci     # the 2-minute version scripts/test.sh runs (a sample every 10 s)
#   scripts/soak.sh --soak-minutes 5 --soak-streams 200   # any flag of `changefeed-bench soak`
#
# Bounds (flags of changefeed-bench): RSS +32 MiB (--soak-max-rss-growth-mib), open fds +16
# (--soak-max-fd-growth), runtime tasks +16 (--soak-max-task-growth).
set -euo pipefail
cd "$(dirname "$0")/.."

# 1,000 streams and the load generator's sockets in one process tree: raise the fd limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

args=()
for arg in "$@"; do
  case $arg in
    --ci) args+=(--soak-minutes 2 --soak-sample-secs 10) ;;
    *) args+=("$arg") ;;
  esac
done

# The same feature set as the nextest build, so CI reuses its compiled dependencies.
cargo build --profile fast --workspace --bins --tests --quiet
out=target/soak
work=$out/work
rm -rf "$work"
mkdir -p "$work"
echo "soak on $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), fd limit $(ulimit -n)"
status=0
target/fast/changefeed-bench soak "${args[@]}" --server-bin target/fast/changefeed \
  --out "$out" --work "$work" || status=$?
if [ -f "$work/pids" ]; then
  while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$work/pids"
fi
echo "soak load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
exit "$status"
