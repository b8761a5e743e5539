-- Feed consumers stop alone on an event they cannot consume (SPEC
-- "Operating the platform"): the checkpoint row records the failure, and
-- the events an operator skipped are kept with their error.
ALTER TABLE projection_checkpoints
    ADD COLUMN failed_event_id uuid,
    ADD COLUMN last_error      text,
    ADD COLUMN failed_at       timestamptz,
    -- Failures in a row; the automatic retry backs off with it.
    ADD COLUMN failures        integer NOT NULL DEFAULT 0;

CREATE TABLE skipped_events
(
    consumer        text        NOT NULL,
    event_id        uuid        NOT NULL,
    transaction_id  xid8        NOT NULL,
    global_position bigint      NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    sequence        bigint      NOT NULL,
    event_type      text        NOT NULL,
    error           text        NOT NULL,
    skipped_by      text        NOT NULL,
    skipped_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Events never default their tenant: an append without `tenant_id` in its
-- metadata is refused (the trigger name sorts first, so it runs before the
-- idempotency-key trigger).
CREATE FUNCTION karvon_require_tenant() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(NEW.metadata ->> 'tenant_id', '') = '' THEN
        RAISE check_violation USING MESSAGE = 'event metadata has no tenant_id';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER events_00_require_tenant
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION karvon_require_tenant();

CREATE OR REPLACE FUNCTION karvon_record_idempotency_key() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    key text := NEW.metadata ->> 'idempotency_key';
BEGIN
    IF key IS NULL THEN
        RETURN NEW;
    END IF;
    INSERT INTO command_log (tenant_id, idempotency_key, transaction_id, last_position,
                             last_sequence, aggregate_type, aggregate_id, response_id,
                             request_hash)
    VALUES (NEW.metadata ->> 'tenant_id', key, NEW.transaction_id,
            NEW.global_position, NEW.sequence, NEW.aggregate_type, NEW.aggregate_id,
            NEW.metadata ->> 'response_id', NEW.metadata ->> 'request_hash')
    ON CONFLICT (tenant_id, idempotency_key) DO UPDATE
        SET last_position = greatest(command_log.last_position, EXCLUDED.last_position),
            last_sequence = greatest(command_log.last_sequence, EXCLUDED.last_sequence)
        WHERE command_log.transaction_id = EXCLUDED.transaction_id
          AND command_log.aggregate_type = EXCLUDED.aggregate_type
          AND command_log.aggregate_id = EXCLUDED.aggregate_id;
    IF NOT FOUND THEN
        RAISE unique_violation USING MESSAGE = 'idempotency key already used';
    END IF;
    RETURN NEW;
END
$$;

-- Wake read-your-writes waiters (in every process) when a checkpoint
-- moves; delivered at commit, folded per transaction.
CREATE FUNCTION karvon_notify_checkpoints() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('karvon_checkpoints', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER projection_checkpoints_notify
    AFTER UPDATE ON projection_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION karvon_notify_checkpoints();
