-- Tenants, users, API keys and rate-limit windows. Credentials are stored
-- only as hashes: Argon2id for passwords, SHA-256 for API-key secrets
-- (high-entropy, so a fast hash is enough and keeps every request cheap).

CREATE TABLE tenants
(
    tenant_id  text        PRIMARY KEY,
    time_zone  text        NOT NULL DEFAULT 'UTC',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Events written before credentials existed belong to this tenant.
INSERT INTO tenants (tenant_id) VALUES ('default');

CREATE TABLE users
(
    username      text        PRIMARY KEY,
    tenant_id     text        NOT NULL REFERENCES tenants,
    password_hash text        NOT NULL,
    scopes        text[]      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys
(
    key_id                uuid        PRIMARY KEY,
    tenant_id             text        NOT NULL REFERENCES tenants,
    prefix                text        NOT NULL UNIQUE,
    secret_hash           bytea       NOT NULL,
    name                  text,
    scopes                text[]      NOT NULL,
    rate_limit_per_minute integer     NOT NULL CHECK (rate_limit_per_minute > 0),
    expires_at            timestamptz,
    revoked_at            timestamptz,
    last_used_at          timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at);

-- Fixed one-minute windows per subject (a key, a user, or a peer address
-- for unauthenticated traffic), shared by every instance.
CREATE TABLE rate_limit_windows
(
    subject      text        NOT NULL,
    window_start timestamptz NOT NULL,
    hits         integer     NOT NULL,
    PRIMARY KEY (subject, window_start)
);
