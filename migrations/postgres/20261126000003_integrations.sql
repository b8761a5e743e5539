-- The integration registry (SPEC §3 "Integrations"): configuration, not an
-- event-sourced aggregate. `secrets` is a JSON object of AEAD ciphertexts
-- (ChaCha20-Poly1305, one random nonce per value, base64), never plain text.
CREATE TABLE integrations
(
    integration_id uuid        PRIMARY KEY,
    tenant_id      text        NOT NULL REFERENCES tenants,
    kind           text        NOT NULL,
    name           text        NOT NULL,
    settings       jsonb       NOT NULL,
    secrets        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX integrations_tenant_idx ON integrations (tenant_id, created_at);

-- Inbound webhook ids already applied, per integration: a redelivery is
-- acknowledged and ignored.
CREATE TABLE webhook_deliveries
(
    integration_id uuid        NOT NULL REFERENCES integrations ON DELETE CASCADE,
    webhook_id     text        NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, webhook_id)
);
