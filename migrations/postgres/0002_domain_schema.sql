-- The domain tables and the change log: the same tables and columns as the SQLite schema
-- (server/migrations/sqlite/0002_domain_schema.sql), so a writer's SQL and the event JSON are the
-- same on both stores. Every statement is IF NOT EXISTS / OR REPLACE: the database may already
-- hold these tables, created by the program that owns them. SQLite's INTEGER flags stay integers
-- (0/1; the triggers turn them into JSON booleans); timestamps are text, RFC 3339 UTC with
-- milliseconds, like SQLite's.

-- The current time as the triggers and defaults store it: RFC 3339 UTC with milliseconds. The
-- clock at the call (not the transaction's start), so a row's created_at is when it was written.
CREATE OR REPLACE FUNCTION changefeed_now() RETURNS text
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$ SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;

CREATE TABLE IF NOT EXISTS projects (
    id text PRIMARY KEY,
    name text NOT NULL,
    created_at text NOT NULL DEFAULT changefeed_now()
);

CREATE TABLE IF NOT EXISTS sessions (
    id text PRIMARY KEY,
    project_id text NOT NULL REFERENCES projects (id),
    activity text NOT NULL DEFAULT 'idle',
    is_terminated integer NOT NULL DEFAULT 0,
    display_name text,
    preview_url text,
    created_at text NOT NULL DEFAULT changefeed_now(),
    updated_at text NOT NULL DEFAULT changefeed_now()
);

CREATE TABLE IF NOT EXISTS pull_requests (
    url text PRIMARY KEY,
    project_id text NOT NULL REFERENCES projects (id),
    session_id text REFERENCES sessions (id),
    state text NOT NULL DEFAULT 'open',
    ci_state text NOT NULL DEFAULT 'pending',
    review_decision text,
    mergeability text,
    created_at text NOT NULL DEFAULT changefeed_now(),
    updated_at text NOT NULL DEFAULT changefeed_now()
);

CREATE TABLE IF NOT EXISTS pr_checks (
    pr_url text NOT NULL REFERENCES pull_requests (url),
    name text NOT NULL,
    commit_sha text NOT NULL,
    status text NOT NULL,
    PRIMARY KEY (pr_url, name, commit_sha)
);

CREATE TABLE IF NOT EXISTS pr_review_threads (
    pr_url text NOT NULL REFERENCES pull_requests (url),
    thread_id text NOT NULL,
    path text,
    line bigint,
    resolved integer NOT NULL DEFAULT 0,
    is_bot integer NOT NULL DEFAULT 0,
    PRIMARY KEY (pr_url, thread_id)
);

-- The durable, ordered log. Writers' triggers append rows with no seq, stamped with their
-- transaction id; the sequencer (server/src/store/postgres/sequencer.rs) assigns each committed
-- row the next seq, in one statement, after commit. So a writer takes no lock and sends no
-- NOTIFY, and a seq becomes visible only together with every lower one.
--   id   insertion order (a writer's rows, and rows of writers that touched the same domain row,
--        in the order they were written); never exposed.
--   seq  assigned once by the sequencer; NULL while pending. Never write it yourself.
--   xid  the writing transaction (diagnostics, and the restore check at start-up).
-- event_type follows the grammar [a-z][a-z0-9_]* (not a closed list). payload is JSON text, kept
-- exactly as written and checked by a cast (jsonb would reorder keys and add spaces).
CREATE TABLE IF NOT EXISTS change_log (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    seq bigint,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    project_id text NOT NULL,
    session_id text,
    event_type text NOT NULL CHECK (event_type ~ '^[a-z][a-z0-9_]*$'),
    payload text NOT NULL CHECK ((payload::json) IS NOT NULL),
    created_at text NOT NULL DEFAULT changefeed_now()
);

-- Indexes on seq cover assigned rows only, so a writer's insert touches two small indexes (the
-- primary key and the pending rows) and the sequencer's update moves a row from one to the other.
CREATE UNIQUE INDEX IF NOT EXISTS change_log_seq ON change_log (seq) WHERE seq IS NOT NULL;
-- Replay of a project set reads (project_id, seq) ranges.
CREATE INDEX IF NOT EXISTS change_log_project_seq ON change_log (project_id, seq)
    WHERE seq IS NOT NULL;
-- The sequencer's queue.
CREATE INDEX IF NOT EXISTS change_log_pending ON change_log (id) INCLUDE (xid) WHERE seq IS NULL;
