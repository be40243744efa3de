#!/usr/bin/env bash
# The fault suite: the release-shaped binary under live streams while things go wrong, checking
# that the resuming client got every committed row exactly once, in order.
#   1. kill -9 of the server while a sqlite3-CLI writer commits (restarted; clients resume with
#      Last-Event-ID);
#   2. kill -9 of a sqlite3-CLI writer in the middle of its transaction (rolled back; the feed
#      goes on);
#   3. an external writer holding a write transaction for seconds (the feed stays healthy and
#      delivers everything once it commits).
# Disk-full (a small tmpfs under the database) is not part of it yet.
#
#   scripts/faults.sh                  # 5 rounds of each
#   FAULTS_ROUNDS=1 scripts/faults.sh  # the short version scripts/test.sh runs
# Needs curl, jq and the sqlite3 CLI (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${FAULTS_ROUNDS:-5}
cargo build --profile fast -p changefeed --bin changefeed --quiet
bin=$PWD/target/fast/changefeed
work=$(mktemp -d)
db=$work/faults.db
server_pid=
writer_pid=
client_pid=
cleanup() {
  for pid in $client_pid $writer_pid $server_pid; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_server() {
  : >"$work/server.log"
  "$bin" serve --database "sqlite://$db" --listen 127.0.0.1:0 2>>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 1 200); do
    addr=$(grep -o 'listen=[0-9.:]*' "$work/server.log" | head -1 | cut -d= -f2 || true)
    [ -n "$addr" ] && return 0
    sleep 0.05
  done
  echo "faults: the server did not start"; cat "$work/server.log"; exit 1
}

# The client: follows the feed from the start, reconnecting after any end with the last id it
# saw (as EventSource does). Every frame is appended to stream.txt.
run_client() {
  local last=0
  while :; do
    curl -sN --max-time 600 -H "Last-Event-ID: $last" "http://$(cat "$work/addr")/api/v1/events" \
      >>"$work/stream.txt" 2>/dev/null || true
    last=$(grep '^id: ' "$work/stream.txt" | tail -1 | cut -c5- || true)
    last=${last:-0}
    sleep 0.1
  done
}

write_sessions() { # $1 = tag, $2 = count: one transaction each through the sqlite3 CLI
  for i in $(seq 1 "$2"); do
    sqlite3 -cmd '.timeout 10000' "$db" \
      "INSERT INTO sessions (id, project_id) VALUES ('$1-$i', 'p1');" >/dev/null
  done
}

start_server
echo "$addr" >"$work/addr"
sqlite3 -cmd '.timeout 10000' "$db" "INSERT INTO projects (id, name) VALUES ('p1', 'P');"
: >"$work/stream.txt"
run_client &
client_pid=$!

for round in $(seq 1 "$rounds"); do
  # 1. kill -9 of the server while a writer commits.
  write_sessions "r$round-a" 60 &
  writer_pid=$!
  sleep 0.3
  kill -9 "$server_pid"; wait "$server_pid" 2>/dev/null || true
  start_server
  echo "$addr" >"$work/addr"
  wait "$writer_pid"; writer_pid=

  # 2. kill -9 of a writer in the middle of its transaction.
  { echo "BEGIN;"
    for i in $(seq 1 20); do echo "INSERT INTO sessions (id, project_id) VALUES ('r$round-lost-$i', 'p1');"; done
    sleep 3; } | sqlite3 -cmd '.timeout 10000' "$db" &
  writer_pid=$!
  sleep 0.5
  kill -9 "$writer_pid" 2>/dev/null || true; wait "$writer_pid" 2>/dev/null || true; writer_pid=

  # 3. an external writer holding a write transaction for 3 s while another one waits.
  { echo "BEGIN IMMEDIATE;"
    echo "INSERT INTO sessions (id, project_id) VALUES ('r$round-held', 'p1');"
    sleep 3; echo "COMMIT;"; } | sqlite3 -cmd '.timeout 10000' "$db" &
  writer_pid=$!
  sleep 0.2
  write_sessions "r$round-b" 5
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/healthz")
  [ "$status" = 200 ] || { echo "faults: /healthz $status while a writer held the lock"; exit 1; }
  wait "$writer_pid"; writer_pid=
done

# Every committed row, once, in order: wait (bounded) for the client to reach the head.
head=$(sqlite3 "$db" "SELECT seq FROM sqlite_sequence WHERE name = 'change_log';")
for _ in $(seq 1 200); do
  last=$(grep '^id: ' "$work/stream.txt" | tail -1 | sed 's/.*://' || true)
  [ "${last:-0}" -ge "$head" ] && break
  sleep 0.1
done
grep '^data: {"seq"' "$work/stream.txt" | cut -c7- | jq -r '.seq' >"$work/got.txt"
sqlite3 "$db" "SELECT seq FROM change_log ORDER BY seq;" >"$work/want.txt"
lost=$(sqlite3 "$db" "SELECT count(*) FROM sessions WHERE id LIKE '%-lost-%';")
got=$(wc -l <"$work/got.txt"); want=$(wc -l <"$work/want.txt")
dups=$(sort -n "$work/got.txt" | uniq -d | wc -l)
sorted=$(sort -n -c "$work/got.txt" 2>/dev/null && echo yes || echo no)
echo "faults: $rounds rounds; $want rows committed, $got delivered, $dups duplicated, in order: $sorted, rolled-back rows present: $lost, server restarts: $rounds"
if [ "$lost" != 0 ] || [ "$dups" != 0 ] || [ "$sorted" != yes ] || ! diff -q "$work/want.txt" "$work/got.txt" >/dev/null; then
  diff "$work/want.txt" "$work/got.txt" | head -20
  echo "faults: FAILED"
  exit 1
fi
echo "faults: ok"
