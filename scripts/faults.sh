#!/usr/bin/env bash
# The fault suite: the release-shaped binary under live streams while things go wrong, checking
# that the resuming client got every committed row exactly once, in order.
#   1. kill -9 of the server while a sqlite3-CLI writer commits (restarted; clients resume with
#      Last-Event-ID);
#   2. kill -9 of a sqlite3-CLI writer in the middle of its transaction (rolled back; the feed
#      goes on);
#   3. an external writer holding a write transaction for seconds (the feed stays healthy and
#      delivers everything once it commits);
#   4. the disk filling up under the database (a small tmpfs; needs root to mount it, otherwise
#      this fault is skipped and says why): writers get "database or disk is full", the server
#      keeps serving what was committed, and once space is freed the feed goes on.
#
#   scripts/faults.sh                  # 5 rounds of each
#   FAULTS_ROUNDS=1 scripts/faults.sh  # the short version scripts/test.sh runs
# Needs curl, jq and the sqlite3 CLI (scripts/install-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=${FAULTS_ROUNDS:-5}
# The same feature set as the nextest build, so CI reuses its compiled dependencies.
cargo build --profile fast --workspace --bins --tests --quiet
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
run_client() { # $1 = file holding the server's address, $2 = file the frames go to
  local last=0
  while :; do
    curl -sN --max-time 600 -H "Last-Event-ID: $last" "http://$(cat "$1")/api/v1/events" \
      >>"$2" 2>/dev/null || true
    last=$(grep '^id: ' "$2" | tail -1 | cut -c5- || true)
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
run_client "$work/addr" "$work/stream.txt" &
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

# Every committed row of $1 (the database), once, in order in $2 (the client's frames): waits
# (bounded) for the client to reach the head. $3 names the check in the output.
verify() {
  local db=$1 stream=$2 name=$3 head last got want dups sorted
  head=$(sqlite3 "$db" "SELECT seq FROM sqlite_sequence WHERE name = 'change_log';")
  for _ in $(seq 1 200); do
    last=$(grep '^id: ' "$stream" | tail -1 | sed 's/.*://' || true)
    [ "${last:-0}" -ge "$head" ] && break
    sleep 0.1
  done
  grep '^data: {"seq"' "$stream" | cut -c7- | jq -r '.seq' >"$work/got.txt"
  sqlite3 "$db" "SELECT seq FROM change_log ORDER BY seq;" >"$work/want.txt"
  got=$(wc -l <"$work/got.txt"); want=$(wc -l <"$work/want.txt")
  dups=$(sort -n "$work/got.txt" | uniq -d | wc -l)
  sorted=$(sort -n -c "$work/got.txt" 2>/dev/null && echo yes || echo no)
  echo "faults: $name: $want rows committed, $got delivered, $dups duplicated, in order: $sorted"
  if [ "$dups" != 0 ] || [ "$sorted" != yes ] || ! diff -q "$work/want.txt" "$work/got.txt" >/dev/null; then
    diff "$work/want.txt" "$work/got.txt" | head -20
    echo "faults: $name: FAILED"
    exit 1
  fi
}

lost=$(sqlite3 "$db" "SELECT count(*) FROM sessions WHERE id LIKE '%-lost-%';")
echo "faults: $rounds rounds of kill -9 (server, writer) and a held write lock; rolled-back rows present: $lost, server restarts: $rounds"
[ "$lost" = 0 ] || { echo "faults: rows of a killed writer's transaction were committed"; exit 1; }
verify "$db" "$work/stream.txt" "kill -9 and held lock"

# 4. The disk fills up under the database.
full=$work/full
mkdir -p "$full"
if ! mount_error=$(mount -t tmpfs -o size=16m tmpfs "$full" 2>&1); then
  echo "faults: disk full: SKIPPED, cannot mount a small tmpfs here ($mount_error); run as root"
  echo "faults: ok"
  exit 0
fi
unmount_full() { umount "$full" 2>/dev/null || umount -l "$full" 2>/dev/null || true; }
trap 'unmount_full; cleanup' EXIT
kill -9 "$client_pid" 2>/dev/null || true; wait "$client_pid" 2>/dev/null || true
kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true
db=$full/full.db
start_server
echo "$addr" >"$work/addr-full"
sqlite3 -cmd '.timeout 10000' "$db" "INSERT INTO projects (id, name) VALUES ('p1', 'P');"
: >"$work/stream-full.txt"
run_client "$work/addr-full" "$work/stream-full.txt" &
client_pid=$!
# Leave about 1 MiB free, then commit 8 KiB rows one transaction each until SQLite says full.
avail_kib=$(df -k --output=avail "$full" | tail -1)
dd if=/dev/zero of="$full/filler" bs=1k count=$((avail_kib - 1024)) status=none 2>/dev/null || true
blob=$(head -c 6000 /dev/zero | tr '\0' x)
committed=0 full_error=
for i in $(seq 1 400); do
  if ! out=$(sqlite3 -cmd '.timeout 10000' "$db" \
      "INSERT INTO sessions (id, project_id, display_name) VALUES ('full-$i', 'p1', '$blob');" 2>&1); then
    full_error=$out
    break
  fi
  committed=$((committed + 1))
done
[ -n "$full_error" ] || { echo "faults: disk full: 400 rows of 8 KiB fit into 1 MiB?"; exit 1; }
case $full_error in
  *"disk is full"*|*"SQLITE_FULL"*) ;;
  *) echo "faults: disk full: unexpected writer error: $full_error"; exit 1 ;;
esac
kill -0 "$server_pid" 2>/dev/null || { echo "faults: disk full: the server died"; tail -5 "$work/server.log"; exit 1; }
health_full=$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/healthz")
verify "$db" "$work/stream-full.txt" "disk full ($committed rows committed before SQLite said: ${full_error##*: }; /healthz $health_full)"
# Space comes back: the feed goes on from where it was.
rm -f "$full/filler"
write_sessions full-after 20
kill -0 "$server_pid" 2>/dev/null || { echo "faults: disk full: the server died after space came back"; exit 1; }
verify "$db" "$work/stream-full.txt" "disk full, then space freed"
echo "faults: ok"
