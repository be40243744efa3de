-- The domain tables and the change log (ARCHITECTURE-NOTES §2). Every statement is IF NOT EXISTS:
-- the database may already hold these tables, created by the program that owns them.
-- Must run on SQLite 3.40 (Debian 12's sqlite3 CLI writes this database too).
-- Timestamps default to the current UTC time in RFC 3339 with milliseconds.

CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    activity TEXT NOT NULL DEFAULT 'idle',
    is_terminated INTEGER NOT NULL DEFAULT 0,
    display_name TEXT,
    preview_url TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS pull_requests (
    url TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    session_id TEXT REFERENCES sessions (id),
    state TEXT NOT NULL DEFAULT 'open',
    ci_state TEXT NOT NULL DEFAULT 'pending',
    review_decision TEXT,
    mergeability TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE IF NOT EXISTS pr_checks (
    pr_url TEXT NOT NULL REFERENCES pull_requests (url),
    name TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    status TEXT NOT NULL,
    PRIMARY KEY (pr_url, name, commit_sha)
);

CREATE TABLE IF NOT EXISTS pr_review_threads (
    pr_url TEXT NOT NULL REFERENCES pull_requests (url),
    thread_id TEXT NOT NULL,
    path TEXT,
    line INTEGER,
    resolved INTEGER NOT NULL DEFAULT 0,
    is_bot INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (pr_url, thread_id)
);

-- The durable, ordered log. AUTOINCREMENT: a seq is never handed out twice (head lives in
-- sqlite_sequence, so deleting the newest rows does not move it back). event_type follows the
-- grammar [a-z][a-z0-9_]* (not a closed list); payload is a JSON text.
CREATE TABLE IF NOT EXISTS change_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id TEXT NOT NULL,
    session_id TEXT,
    event_type TEXT NOT NULL
        CHECK (event_type GLOB '[a-z]*' AND NOT event_type GLOB '*[^a-z0-9_]*'),
    payload TEXT NOT NULL CHECK (json_valid(payload)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- Replay of a project set reads (project_id, seq) ranges.
CREATE INDEX IF NOT EXISTS change_log_project_seq ON change_log (project_id, seq);
