-- One change_log row per meaningful change, written by AFTER triggers in the writer's own
-- transaction (ARCHITECTURE-NOTES §2). Payloads are JSON objects with camelCase keys; booleans
-- are JSON true/false (json_object alone would emit 0/1, hence json('true'/'false')). Nullable
-- columns are compared with IS NOT, so NULL -> 'x' counts as a change. The project and session
-- of a check or review thread come from its pull request. Everything here runs on SQLite 3.40:
-- no JSONB, no json_valid(x, flags), no ->>.

CREATE TRIGGER IF NOT EXISTS changefeed_session_created
AFTER INSERT ON sessions
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        NEW.project_id,
        NEW.id,
        'session_created',
        json_object(
            'id', NEW.id,
            'activity', NEW.activity,
            'isTerminated', json(CASE WHEN NEW.is_terminated THEN 'true' ELSE 'false' END)
        )
    );
END;

CREATE TRIGGER IF NOT EXISTS changefeed_session_updated
AFTER UPDATE ON sessions
WHEN OLD.activity IS NOT NEW.activity
    OR OLD.is_terminated IS NOT NEW.is_terminated
    OR OLD.display_name IS NOT NEW.display_name
    OR OLD.preview_url IS NOT NEW.preview_url
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        NEW.project_id,
        NEW.id,
        'session_updated',
        json_object(
            'id', NEW.id,
            'activity', NEW.activity,
            'isTerminated', json(CASE WHEN NEW.is_terminated THEN 'true' ELSE 'false' END),
            'displayName', NEW.display_name,
            'previewUrl', NEW.preview_url
        )
    );
END;

CREATE TRIGGER IF NOT EXISTS changefeed_pr_created
AFTER INSERT ON pull_requests
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        NEW.project_id,
        NEW.session_id,
        'pr_created',
        json_object(
            'url', NEW.url,
            'session', NEW.session_id,
            'state', NEW.state,
            'ci', NEW.ci_state,
            'review', NEW.review_decision,
            'mergeability', NEW.mergeability
        )
    );
END;

CREATE TRIGGER IF NOT EXISTS changefeed_pr_updated
AFTER UPDATE ON pull_requests
WHEN OLD.state IS NOT NEW.state
    OR OLD.ci_state IS NOT NEW.ci_state
    OR OLD.review_decision IS NOT NEW.review_decision
    OR OLD.mergeability IS NOT NEW.mergeability
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        NEW.project_id,
        NEW.session_id,
        'pr_updated',
        json_object(
            'url', NEW.url,
            'session', NEW.session_id,
            'state', NEW.state,
            'ci', NEW.ci_state,
            'review', NEW.review_decision,
            'mergeability', NEW.mergeability
        )
    );
END;

CREATE TRIGGER IF NOT EXISTS changefeed_pr_session_changed
AFTER UPDATE ON pull_requests
WHEN OLD.session_id IS NOT NEW.session_id
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        NEW.project_id,
        NEW.session_id,
        'pr_session_changed',
        json_object(
            'url', NEW.url,
            'fromSession', OLD.session_id,
            'toSession', NEW.session_id
        )
    );
END;

-- A check's project and session come from its pull request. Scalar subqueries, not
-- INSERT ... SELECT: a check whose pull request is missing (a writer with foreign_keys off)
-- fails the write on change_log.project_id NOT NULL instead of silently logging nothing.
CREATE TRIGGER IF NOT EXISTS changefeed_pr_check_recorded_insert
AFTER INSERT ON pr_checks
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        (SELECT project_id FROM pull_requests WHERE url = NEW.pr_url),
        (SELECT session_id FROM pull_requests WHERE url = NEW.pr_url),
        'pr_check_recorded',
        json_object(
            'pr', NEW.pr_url,
            'name', NEW.name,
            'commit', NEW.commit_sha,
            'status', NEW.status
        )
    );
END;

CREATE TRIGGER IF NOT EXISTS changefeed_pr_check_recorded_update
AFTER UPDATE ON pr_checks
WHEN OLD.status IS NOT NEW.status
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        (SELECT project_id FROM pull_requests WHERE url = NEW.pr_url),
        (SELECT session_id FROM pull_requests WHERE url = NEW.pr_url),
        'pr_check_recorded',
        json_object(
            'pr', NEW.pr_url,
            'name', NEW.name,
            'commit', NEW.commit_sha,
            'status', NEW.status
        )
    );
END;

CREATE TRIGGER IF NOT EXISTS changefeed_pr_review_thread_added
AFTER INSERT ON pr_review_threads
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        (SELECT project_id FROM pull_requests WHERE url = NEW.pr_url),
        (SELECT session_id FROM pull_requests WHERE url = NEW.pr_url),
        'pr_review_thread_added',
        json_object(
            'pr', NEW.pr_url,
            'thread', NEW.thread_id,
            'path', NEW.path,
            'line', NEW.line,
            'resolved', json(CASE WHEN NEW.resolved THEN 'true' ELSE 'false' END),
            'isBot', json(CASE WHEN NEW.is_bot THEN 'true' ELSE 'false' END)
        )
    );
END;

CREATE TRIGGER IF NOT EXISTS changefeed_pr_review_thread_resolved
AFTER UPDATE ON pr_review_threads
WHEN OLD.resolved IS NOT NEW.resolved
BEGIN
    INSERT INTO change_log (project_id, session_id, event_type, payload)
    VALUES (
        (SELECT project_id FROM pull_requests WHERE url = NEW.pr_url),
        (SELECT session_id FROM pull_requests WHERE url = NEW.pr_url),
        'pr_review_thread_resolved',
        json_object(
            'pr', NEW.pr_url,
            'thread', NEW.thread_id,
            'path', NEW.path,
            'line', NEW.line,
            'resolved', json(CASE WHEN NEW.resolved THEN 'true' ELSE 'false' END)
        )
    );
END;
