-- The event store. The first seven columns are exactly what postgres-es
-- writes; the rest are filled by defaults, so its inserts stay untouched.

-- UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits.
CREATE FUNCTION karvon_uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE AS $$
  SELECT encode(
    set_bit(
      set_bit(
        overlay(uuid_send(gen_random_uuid())
                placing substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                FROM 1 FOR 6),
        52, 1),
      53, 1),
    'hex')::uuid
$$;

CREATE TABLE events
(
    aggregate_type  text                         NOT NULL,
    aggregate_id    text                         NOT NULL,
    sequence        bigint CHECK (sequence >= 0) NOT NULL,
    event_type      text                         NOT NULL,
    event_version   text                         NOT NULL,
    payload         jsonb                        NOT NULL,
    metadata        jsonb                        NOT NULL,
    global_position bigserial                    NOT NULL,
    transaction_id  xid8                         NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid                         NOT NULL DEFAULT karvon_uuid_v7(),
    recorded_at     timestamptz                  NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);

-- The global feed is read in (transaction_id, global_position) order.
-- Every index costs each append; add the audit indexes (event id, tenant
-- feed) with the endpoints that need them.
CREATE INDEX events_feed_idx ON events (transaction_id, global_position);

CREATE TABLE snapshots
(
    aggregate_type   text                                 NOT NULL,
    aggregate_id     text                                 NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0)    NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          jsonb                                NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);

-- Idempotency keys, recorded by a trigger in the same transaction as the
-- events they produced: a key is either fully applied or not at all, even
-- if the server is killed mid-command.
CREATE TABLE command_log
(
    tenant_id       text        NOT NULL,
    idempotency_key text        NOT NULL,
    transaction_id  xid8        NOT NULL,
    last_position   bigint      NOT NULL,
    last_sequence   bigint      NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    response_id     text,
    request_hash    text,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, idempotency_key)
);

CREATE FUNCTION karvon_record_idempotency_key() RETURNS trigger
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
    VALUES (coalesce(NEW.metadata ->> 'tenant_id', 'default'), key, NEW.transaction_id,
            NEW.global_position, NEW.sequence, NEW.aggregate_type, NEW.aggregate_id,
            NEW.metadata ->> 'response_id', NEW.metadata ->> 'request_hash')
    ON CONFLICT (tenant_id, idempotency_key) DO UPDATE
        SET last_position = greatest(command_log.last_position, EXCLUDED.last_position),
            last_sequence = greatest(command_log.last_sequence, EXCLUDED.last_sequence)
        WHERE command_log.transaction_id = EXCLUDED.transaction_id
          AND command_log.aggregate_type = EXCLUDED.aggregate_type
          AND command_log.aggregate_id = EXCLUDED.aggregate_id;
    IF NOT FOUND THEN
        -- Another transaction already used this key: fail the whole append
        -- (postgres-es reports a unique violation as an optimistic-lock
        -- conflict, and the caller answers from the log).
        RAISE unique_violation USING MESSAGE = 'idempotency key already used';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER events_idempotency_key
    BEFORE INSERT ON events
    FOR EACH ROW WHEN (NEW.metadata ? 'idempotency_key')
    EXECUTE FUNCTION karvon_record_idempotency_key();

-- Wake feed readers; notifications are delivered at commit, and repeats
-- within one transaction are folded into one by PostgreSQL.
CREATE FUNCTION karvon_notify_events() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('karvon_events', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION karvon_notify_events();

-- One row per feed consumer (read model, relay, process manager).
CREATE TABLE projection_checkpoints
(
    name           text        PRIMARY KEY,
    transaction_id xid8        NOT NULL DEFAULT '0',
    position       bigint      NOT NULL DEFAULT 0,
    events_seen    bigint      NOT NULL DEFAULT 0,
    -- Bumped when a rebuild swaps the read model, so a runner knows any
    -- state it cached belongs to tables that are gone.
    generation     bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
