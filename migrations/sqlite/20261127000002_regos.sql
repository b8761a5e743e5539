-- REGOS sync: a job's parameters (the date window), the gateway's rate
-- bucket shared by every instance, and which daily runs were started.
ALTER TABLE import_queue ADD COLUMN params TEXT;

-- A token bucket per name: `tokens` left at `updated_ms` (Unix ms).
CREATE TABLE rate_buckets
(
    bucket     TEXT    PRIMARY KEY,
    tokens     REAL    NOT NULL,
    updated_ms INTEGER NOT NULL
);

-- One row per integration and local day whose scheduled sync was started
-- (the instance that inserts the row runs it).
CREATE TABLE scheduled_runs
(
    integration_id TEXT NOT NULL,
    scheduled_for  TEXT NOT NULL,
    job_id         TEXT NOT NULL,
    PRIMARY KEY (integration_id, scheduled_for)
);
