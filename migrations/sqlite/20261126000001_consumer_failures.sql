-- Feed consumers stop alone on an event they cannot consume (SPEC
-- "Operating the platform"): the checkpoint row records the failure, and
-- the events an operator skipped are kept with their error.
ALTER TABLE projection_checkpoints ADD COLUMN failed_event_id TEXT;
ALTER TABLE projection_checkpoints ADD COLUMN last_error TEXT;
ALTER TABLE projection_checkpoints ADD COLUMN failed_at TEXT;
-- Failures in a row; the automatic retry backs off with it.
ALTER TABLE projection_checkpoints ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;

CREATE TABLE skipped_events
(
    consumer        TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    transaction_id  INTEGER NOT NULL,
    global_position INTEGER NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    sequence        INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    skipped_by      TEXT    NOT NULL,
    skipped_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, event_id)
);

-- Events never default their tenant: an append without `tenant_id` in its
-- metadata is refused.
CREATE TRIGGER events_require_tenant
BEFORE INSERT ON events
WHEN coalesce(json_extract(NEW.metadata, '$.tenant_id'), '') = ''
BEGIN
    SELECT RAISE(ABORT, 'event metadata has no tenant_id');
END;

DROP TRIGGER events_idempotency_key;

CREATE TRIGGER events_idempotency_key
AFTER INSERT ON events
WHEN json_extract(NEW.metadata, '$.idempotency_key') IS NOT NULL
BEGIN
    -- Another commit already used this key: fail the whole append (the
    -- executor then answers from the log).
    SELECT RAISE(ABORT, 'idempotency key already used')
     WHERE EXISTS (SELECT 1 FROM command_log
                    WHERE tenant_id = json_extract(NEW.metadata, '$.tenant_id')
                      AND idempotency_key = json_extract(NEW.metadata, '$.idempotency_key')
                      AND (commit_id IS NOT json_extract(NEW.metadata, '$.commit_id')
                           OR aggregate_type <> NEW.aggregate_type
                           OR aggregate_id <> NEW.aggregate_id));
    INSERT INTO command_log (tenant_id, idempotency_key, commit_id, last_position, last_sequence,
                             aggregate_type, aggregate_id, response_id, request_hash)
    VALUES (json_extract(NEW.metadata, '$.tenant_id'),
            json_extract(NEW.metadata, '$.idempotency_key'),
            json_extract(NEW.metadata, '$.commit_id'),
            NEW.global_position, NEW.sequence, NEW.aggregate_type, NEW.aggregate_id,
            json_extract(NEW.metadata, '$.response_id'),
            json_extract(NEW.metadata, '$.request_hash'))
    ON CONFLICT (tenant_id, idempotency_key) DO UPDATE
        SET last_position = max(last_position, excluded.last_position),
            last_sequence = max(last_sequence, excluded.last_sequence);
END;
