-- One change_log row per meaningful change, written by AFTER ROW triggers in the writer's own
-- transaction: the same kinds, rows and payload bytes as the SQLite triggers
-- (server/migrations/sqlite/0003_change_log_triggers.sql). Payloads are JSON objects with
-- camelCase keys and no whitespace, built as text exactly as SQLite's json_object() writes them
-- (json_build_object would add spaces; jsonb would reorder keys); integer flags become JSON
-- true/false. Nullable columns are compared with IS DISTINCT FROM, so NULL -> 'x' counts as a
-- change. The triggers take no lock and send no NOTIFY: the sequencer does that after commit.
--
-- Several triggers on one event fire in name order on Postgres and newest-first on SQLite; the
-- names keep the two orders equal (pr_session_changed before pr_updated).

-- A column value as JSON, byte for byte as SQLite's json_object writes it: text as a string
-- with JSON escapes, numbers as numbers, NULL as null. Polymorphic, so a domain table that the
-- application created with other column types (varchar, uuid, integer ids) still works.
CREATE OR REPLACE FUNCTION changefeed_json_text(value anyelement) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT COALESCE(to_json(value)::text, 'null') $$;

-- A flag as a JSON boolean: an integer is true when non-zero (as SQLite's CASE WHEN reads it),
-- a boolean as itself, NULL is false.
CREATE OR REPLACE FUNCTION changefeed_json_flag(value anyelement) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN value IS NULL OR value::text IN ('0', 'f', 'false') THEN 'false' ELSE 'true' END $$;

CREATE OR REPLACE FUNCTION changefeed_session_created() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        NEW.project_id,
        NEW.id,
        'session_created',
        '{"id":' || changefeed_json_text(NEW.id)
            || ',"activity":' || changefeed_json_text(NEW.activity)
            || ',"isTerminated":' || changefeed_json_flag(NEW.is_terminated)
            || '}'
    );
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER changefeed_session_created
AFTER INSERT ON sessions
FOR EACH ROW EXECUTE FUNCTION changefeed_session_created();

CREATE OR REPLACE FUNCTION changefeed_session_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        NEW.project_id,
        NEW.id,
        'session_updated',
        '{"id":' || changefeed_json_text(NEW.id)
            || ',"activity":' || changefeed_json_text(NEW.activity)
            || ',"isTerminated":' || changefeed_json_flag(NEW.is_terminated)
            || ',"displayName":' || changefeed_json_text(NEW.display_name)
            || ',"previewUrl":' || changefeed_json_text(NEW.preview_url)
            || '}'
    );
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER changefeed_session_updated
AFTER UPDATE ON sessions
FOR EACH ROW
WHEN (OLD.activity IS DISTINCT FROM NEW.activity
    OR OLD.is_terminated IS DISTINCT FROM NEW.is_terminated
    OR OLD.display_name IS DISTINCT FROM NEW.display_name
    OR OLD.preview_url IS DISTINCT FROM NEW.preview_url)
EXECUTE FUNCTION changefeed_session_updated();

-- pr_created and pr_updated share one payload.
CREATE OR REPLACE FUNCTION changefeed_pr_state() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        NEW.project_id,
        NEW.session_id,
        CASE TG_OP WHEN 'INSERT' THEN 'pr_created' ELSE 'pr_updated' END,
        '{"url":' || changefeed_json_text(NEW.url)
            || ',"session":' || changefeed_json_text(NEW.session_id)
            || ',"state":' || changefeed_json_text(NEW.state)
            || ',"ci":' || changefeed_json_text(NEW.ci_state)
            || ',"review":' || changefeed_json_text(NEW.review_decision)
            || ',"mergeability":' || changefeed_json_text(NEW.mergeability)
            || '}'
    );
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER changefeed_pr_created
AFTER INSERT ON pull_requests
FOR EACH ROW EXECUTE FUNCTION changefeed_pr_state();

CREATE OR REPLACE TRIGGER changefeed_pr_updated
AFTER UPDATE ON pull_requests
FOR EACH ROW
WHEN (OLD.state IS DISTINCT FROM NEW.state
    OR OLD.ci_state IS DISTINCT FROM NEW.ci_state
    OR OLD.review_decision IS DISTINCT FROM NEW.review_decision
    OR OLD.mergeability IS DISTINCT FROM NEW.mergeability)
EXECUTE FUNCTION changefeed_pr_state();

CREATE OR REPLACE FUNCTION changefeed_pr_session_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        NEW.project_id,
        NEW.session_id,
        'pr_session_changed',
        '{"url":' || changefeed_json_text(NEW.url)
            || ',"fromSession":' || changefeed_json_text(OLD.session_id)
            || ',"toSession":' || changefeed_json_text(NEW.session_id)
            || '}'
    );
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER changefeed_pr_session_changed
AFTER UPDATE ON pull_requests
FOR EACH ROW
WHEN (OLD.session_id IS DISTINCT FROM NEW.session_id)
EXECUTE FUNCTION changefeed_pr_session_changed();

-- A check's (and a review thread's) project and session come from its pull request. Scalar
-- subqueries, as on SQLite: a missing pull request fails the write on project_id NOT NULL
-- instead of silently logging nothing.
CREATE OR REPLACE FUNCTION changefeed_pr_check_recorded() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        (SELECT project_id FROM pull_requests WHERE url = NEW.pr_url),
        (SELECT session_id FROM pull_requests WHERE url = NEW.pr_url),
        'pr_check_recorded',
        '{"pr":' || changefeed_json_text(NEW.pr_url)
            || ',"name":' || changefeed_json_text(NEW.name)
            || ',"commit":' || changefeed_json_text(NEW.commit_sha)
            || ',"status":' || changefeed_json_text(NEW.status)
            || '}'
    );
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER changefeed_pr_check_recorded_insert
AFTER INSERT ON pr_checks
FOR EACH ROW EXECUTE FUNCTION changefeed_pr_check_recorded();

CREATE OR REPLACE TRIGGER changefeed_pr_check_recorded_update
AFTER UPDATE ON pr_checks
FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION changefeed_pr_check_recorded();

CREATE OR REPLACE FUNCTION changefeed_pr_review_thread_added() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        (SELECT project_id FROM pull_requests WHERE url = NEW.pr_url),
        (SELECT session_id FROM pull_requests WHERE url = NEW.pr_url),
        'pr_review_thread_added',
        '{"pr":' || changefeed_json_text(NEW.pr_url)
            || ',"thread":' || changefeed_json_text(NEW.thread_id)
            || ',"path":' || changefeed_json_text(NEW.path)
            || ',"line":' || changefeed_json_text(NEW.line)
            || ',"resolved":' || changefeed_json_flag(NEW.resolved)
            || ',"isBot":' || changefeed_json_flag(NEW.is_bot)
            || '}'
    );
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER changefeed_pr_review_thread_added
AFTER INSERT ON pr_review_threads
FOR EACH ROW EXECUTE FUNCTION changefeed_pr_review_thread_added();

CREATE OR REPLACE FUNCTION changefeed_pr_review_thread_resolved() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        (SELECT project_id FROM pull_requests WHERE url = NEW.pr_url),
        (SELECT session_id FROM pull_requests WHERE url = NEW.pr_url),
        'pr_review_thread_resolved',
        '{"pr":' || changefeed_json_text(NEW.pr_url)
            || ',"thread":' || changefeed_json_text(NEW.thread_id)
            || ',"path":' || changefeed_json_text(NEW.path)
            || ',"line":' || changefeed_json_text(NEW.line)
            || ',"resolved":' || changefeed_json_flag(NEW.resolved)
            || '}'
    );
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER changefeed_pr_review_thread_resolved
AFTER UPDATE ON pr_review_threads
FOR EACH ROW
WHEN (OLD.resolved IS DISTINCT FROM NEW.resolved)
EXECUTE FUNCTION changefeed_pr_review_thread_resolved();
