-- The integration registry (SPEC §3 "Integrations"): configuration, not an
-- event-sourced aggregate. `secrets` is a JSON object of AEAD ciphertexts
-- (ChaCha20-Poly1305, one random nonce per value, base64), never plain text.
CREATE TABLE integrations
(
    integration_id TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL REFERENCES tenants,
    kind           TEXT NOT NULL,
    name           TEXT NOT NULL,
    settings       TEXT NOT NULL,
    secrets        TEXT NOT NULL,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX integrations_tenant_idx ON integrations (tenant_id, created_at);

-- Inbound webhook ids already applied, per integration: a redelivery is
-- acknowledged and ignored.
CREATE TABLE webhook_deliveries
(
    integration_id TEXT NOT NULL REFERENCES integrations ON DELETE CASCADE,
    webhook_id     TEXT NOT NULL,
    received_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (integration_id, webhook_id)
);
