-- changefeed's own bookkeeping, shared by every replica that serves this database and kept apart
-- from the tables it serves (which another program may own). Needs PostgreSQL 14 or later.
--
-- changefeed_meta: the log's epoch (16 lowercase hex digits), the highest seq any replica has
-- published (`published`, for the start-up epoch rule), the retention floor (`floor`), and the
-- identity of the database the log was created in (`database`, written at the first start:
-- a restore into another database or cluster rotates the epoch). Values are text, as on SQLite.
CREATE TABLE IF NOT EXISTS changefeed_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

INSERT INTO changefeed_meta (key, value) VALUES
    ('epoch', substr(md5(gen_random_uuid()::text), 1, 16)),
    ('published', '0'),
    ('floor', '0')
ON CONFLICT (key) DO NOTHING;

-- The sequencer's counter: the highest seq ever assigned (the log's head). Only the sequencer
-- writes it, in the same statement that assigns the seqs, so it never moves without its rows.
CREATE TABLE IF NOT EXISTS changefeed_sequencer (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    head bigint NOT NULL DEFAULT 0 CHECK (head >= 0)
);

INSERT INTO changefeed_sequencer DEFAULT VALUES ON CONFLICT DO NOTHING;

-- One row per running replica: the highest seq its live feed has published, refreshed while it
-- runs. Retention never prunes above the lowest mark of a replica seen recently (its live
-- subscribers have not been sent those rows yet); a replica removes its row when it stops.
CREATE TABLE IF NOT EXISTS changefeed_replicas (
    replica text PRIMARY KEY,
    published bigint NOT NULL CHECK (published >= 0),
    seen_at timestamptz NOT NULL DEFAULT now()
);
