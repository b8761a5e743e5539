-- The event store on SQLite. The columns sqlite-es writes come first; the
-- rest are filled by defaults, so its inserts stay untouched. Every write
-- goes through one connection (and SQLite's single write lock), so events
-- commit in `global_position` order and the feed is simply that order.

CREATE TABLE events
(
    -- AUTOINCREMENT: positions are never reused, not even after a VACUUM.
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    sequence        INTEGER NOT NULL CHECK (sequence >= 0),
    event_type      TEXT    NOT NULL,
    event_version   TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    -- UUIDv7 (RFC 9562): 48-bit Unix milliseconds, version 7, variant,
    -- then random bits.
    event_id        TEXT    NOT NULL DEFAULT (lower(
                        substr(printf('%012x', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)), 1, 8)
                        || '-' ||
                        substr(printf('%012x', CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)), 9, 4)
                        || '-7' || substr(hex(randomblob(2)), 2) || '-' ||
                        substr('89ab', 1 + (abs(random()) % 4), 1) ||
                        substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    recorded_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (aggregate_type, aggregate_id, sequence)
);

CREATE TABLE snapshots
(
    aggregate_type   TEXT    NOT NULL,
    aggregate_id     TEXT    NOT NULL,
    last_sequence    INTEGER NOT NULL CHECK (last_sequence >= 0),
    current_snapshot INTEGER NOT NULL CHECK (current_snapshot >= 0),
    payload          TEXT    NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Idempotency keys, recorded by a trigger in the same transaction as the
-- events they produced. `commit_id` (a fresh id per commit attempt, in the
-- event metadata) tells this command's later events from a twin's.
CREATE TABLE command_log
(
    tenant_id       TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    commit_id       TEXT,
    last_position   INTEGER NOT NULL,
    last_sequence   INTEGER NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    response_id     TEXT,
    request_hash    TEXT,
    recorded_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant_id, idempotency_key)
);

CREATE TRIGGER events_idempotency_key
AFTER INSERT ON events
WHEN json_extract(NEW.metadata, '$.idempotency_key') IS NOT NULL
BEGIN
    -- Another commit already used this key: fail the whole append (the
    -- executor then answers from the log).
    SELECT RAISE(ABORT, 'idempotency key already used')
     WHERE EXISTS (SELECT 1 FROM command_log
                    WHERE tenant_id = coalesce(json_extract(NEW.metadata, '$.tenant_id'), 'default')
                      AND idempotency_key = json_extract(NEW.metadata, '$.idempotency_key')
                      AND (commit_id IS NOT json_extract(NEW.metadata, '$.commit_id')
                           OR aggregate_type <> NEW.aggregate_type
                           OR aggregate_id <> NEW.aggregate_id));
    INSERT INTO command_log (tenant_id, idempotency_key, commit_id, last_position, last_sequence,
                             aggregate_type, aggregate_id, response_id, request_hash)
    VALUES (coalesce(json_extract(NEW.metadata, '$.tenant_id'), 'default'),
            json_extract(NEW.metadata, '$.idempotency_key'),
            json_extract(NEW.metadata, '$.commit_id'),
            NEW.global_position, NEW.sequence, NEW.aggregate_type, NEW.aggregate_id,
            json_extract(NEW.metadata, '$.response_id'),
            json_extract(NEW.metadata, '$.request_hash'))
    ON CONFLICT (tenant_id, idempotency_key) DO UPDATE
        SET last_position = max(last_position, excluded.last_position),
            last_sequence = max(last_sequence, excluded.last_sequence);
END;

-- One row per feed consumer (read model, relay, process manager).
-- `transaction_id` is always 0 here; it exists so positions read the same
-- on both backends.
CREATE TABLE projection_checkpoints
(
    name           TEXT    PRIMARY KEY,
    transaction_id INTEGER NOT NULL DEFAULT 0,
    position       INTEGER NOT NULL DEFAULT 0,
    events_seen    INTEGER NOT NULL DEFAULT 0,
    generation     INTEGER NOT NULL DEFAULT 0,
    updated_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
