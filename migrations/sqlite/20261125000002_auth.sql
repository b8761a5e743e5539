-- Tenants, users, API keys and rate-limit windows (see the PostgreSQL
-- migration of the same name). Lists are JSON arrays, ids and times text.

CREATE TABLE tenants
(
    tenant_id  TEXT PRIMARY KEY,
    time_zone  TEXT NOT NULL DEFAULT 'UTC',
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

INSERT INTO tenants (tenant_id) VALUES ('default');

CREATE TABLE users
(
    username      TEXT PRIMARY KEY,
    tenant_id     TEXT NOT NULL REFERENCES tenants,
    password_hash TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE api_keys
(
    key_id                TEXT    PRIMARY KEY,
    tenant_id             TEXT    NOT NULL REFERENCES tenants,
    prefix                TEXT    NOT NULL UNIQUE,
    secret_hash           BLOB    NOT NULL,
    name                  TEXT,
    scopes                TEXT    NOT NULL,
    rate_limit_per_minute INTEGER NOT NULL CHECK (rate_limit_per_minute > 0),
    expires_at            TEXT,
    revoked_at            TEXT,
    last_used_at          TEXT,
    created_at            TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at);

-- Fixed one-minute windows per subject; `window_start` is Unix seconds.
CREATE TABLE rate_limit_windows
(
    subject      TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    hits         INTEGER NOT NULL,
    PRIMARY KEY (subject, window_start)
);
