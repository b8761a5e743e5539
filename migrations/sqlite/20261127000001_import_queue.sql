-- Import jobs not yet finished: the worker's queue. Progress lives in the
-- event store (ImportJob streams); a row here only says "run this job"
-- and keeps one running job per integration and kind (uploads name no
-- integration, so they never block each other). The worker deletes the
-- row once the job completed or failed.
CREATE TABLE import_queue
(
    job_id         TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL,
    integration_id TEXT,
    kind           TEXT NOT NULL,
    source         TEXT NOT NULL,
    -- A CommerceML upload: the directory holding import.xml / offers.xml.
    upload_dir     TEXT,
    -- Who asked (`user:<id>`, `key:<id>`): the actor of the job's events.
    actor          TEXT NOT NULL,
    queued_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (tenant_id, integration_id, kind)
);
