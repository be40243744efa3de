-- changefeed's own bookkeeping, kept apart from the tables it serves (which another program may
-- own): the log's epoch, the highest seq published to clients, and the retention floor.
-- Values are TEXT; `published` and `floor` hold decimal seqs.
CREATE TABLE IF NOT EXISTS changefeed_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The epoch is created with the database: 16 lowercase hex digits. INSERT OR IGNORE keeps an
-- existing epoch (and marks) when the table is already there.
INSERT OR IGNORE INTO changefeed_meta (key, value) VALUES
    ('epoch', lower(hex(randomblob(8)))),
    ('published', '0'),
    ('floor', '0');
