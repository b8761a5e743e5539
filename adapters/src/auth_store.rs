//! Storage for tenants, users, API keys and rate-limit windows. Only
//! hashes of secrets ever reach this module.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::StorageError;
use crate::db::{Db, Portable, json_list, on_pool};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub tenant_id: String,
    pub time_zone: String,
    /// May a purchase-order receipt bring more than was ordered?
    pub allow_over_delivery: bool,
}

/// Creates a tenant; `false` when it already exists (time zone unchanged).
pub async fn create_tenant(
    db: &Db,
    tenant_id: &str,
    time_zone: &str,
) -> Result<bool, StorageError> {
    let inserted = on_pool!(db, write, pool => sqlx::query(
        "INSERT INTO tenants (tenant_id, time_zone) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(tenant_id)
    .bind(time_zone)
    .execute(pool)
    .await?
    .rows_affected());
    Ok(inserted == 1)
}

/// Every tenant's id.
pub async fn tenant_ids(db: &Db) -> Result<Vec<String>, StorageError> {
    on_pool!(db, read, pool => Ok(sqlx::query_scalar("SELECT tenant_id FROM tenants ORDER BY tenant_id")
        .fetch_all(pool)
        .await?))
}

pub async fn tenant(db: &Db, tenant_id: &str) -> Result<Option<Tenant>, StorageError> {
    const SELECT: &str =
        "SELECT tenant_id, time_zone, allow_over_delivery FROM tenants WHERE tenant_id = $1";
    on_pool!(db, read, pool => sqlx::query(SELECT)
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?
        .map(|row| {
            Ok(Tenant {
                tenant_id: row.text("tenant_id")?,
                time_zone: row.text("time_zone")?,
                allow_over_delivery: row.flag("allow_over_delivery")?,
            })
        })
        .transpose())
}

/// Sets whether the tenant accepts over-delivery; `false` when there is no
/// such tenant.
pub async fn set_allow_over_delivery(
    db: &Db,
    tenant_id: &str,
    allow: bool,
) -> Result<bool, StorageError> {
    let updated = on_pool!(db, write, pool => sqlx::query(
        "UPDATE tenants SET allow_over_delivery = $2 WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .bind(allow)
    .execute(pool)
    .await?
    .rows_affected());
    Ok(updated == 1)
}

pub struct NewUser<'a> {
    pub tenant_id: &'a str,
    pub username: &'a str,
    pub password_hash: &'a str,
    pub scopes: &'a [String],
}

/// Creates or replaces a user (a new password hash and scopes).
/// Creates a user, or changes the password and scopes of one of the same
/// tenant. False when the username belongs to another tenant (usernames
/// are unique across the installation; a user is never moved).
pub async fn upsert_user(db: &Db, user: &NewUser<'_>) -> Result<bool, StorageError> {
    const UPSERT: &str = "INSERT INTO users (username, tenant_id, password_hash, scopes)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (username) DO UPDATE SET
             password_hash = excluded.password_hash, scopes = excluded.scopes
         WHERE users.tenant_id = excluded.tenant_id";
    let saved = match db {
        Db::Postgres(pool) => sqlx::query(UPSERT)
            .bind(user.username)
            .bind(user.tenant_id)
            .bind(user.password_hash)
            .bind(user.scopes)
            .execute(pool)
            .await?
            .rows_affected(),
        Db::Sqlite(sqlite) => sqlx::query(UPSERT)
            .bind(user.username)
            .bind(user.tenant_id)
            .bind(user.password_hash)
            .bind(json_list(user.scopes))
            .execute(&sqlite.writer)
            .await?
            .rows_affected(),
    };
    Ok(saved == 1)
}

#[derive(Debug, Clone)]
pub struct StoredUser {
    pub username: String,
    pub tenant_id: String,
    pub password_hash: String,
    pub scopes: Vec<String>,
}

pub async fn user(db: &Db, username: &str) -> Result<Option<StoredUser>, StorageError> {
    const SELECT: &str =
        "SELECT username, tenant_id, password_hash, scopes FROM users WHERE username = $1";
    on_pool!(db, read, pool => sqlx::query(SELECT)
        .bind(username)
        .fetch_optional(pool)
        .await?
        .map(|row| {
            Ok(StoredUser {
                username: row.text("username")?,
                tenant_id: row.text("tenant_id")?,
                password_hash: row.text("password_hash")?,
                scopes: row.strings("scopes")?,
            })
        })
        .transpose())
}

pub struct NewApiKey<'a> {
    pub key_id: Uuid,
    pub tenant_id: &'a str,
    pub prefix: &'a str,
    pub secret_hash: &'a [u8],
    pub name: Option<&'a str>,
    pub scopes: &'a [String],
    pub rate_limit_per_minute: i32,
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn insert_api_key(db: &Db, key: &NewApiKey<'_>) -> Result<(), StorageError> {
    const INSERT: &str =
        "INSERT INTO api_keys (key_id, tenant_id, prefix, secret_hash, name, scopes,
                                   rate_limit_per_minute, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    match db {
        Db::Postgres(pool) => {
            sqlx::query(INSERT)
                .bind(key.key_id)
                .bind(key.tenant_id)
                .bind(key.prefix)
                .bind(key.secret_hash)
                .bind(key.name)
                .bind(key.scopes)
                .bind(key.rate_limit_per_minute)
                .bind(key.expires_at)
                .execute(pool)
                .await?;
        }
        Db::Sqlite(sqlite) => {
            sqlx::query(INSERT)
                .bind(key.key_id.to_string())
                .bind(key.tenant_id)
                .bind(key.prefix)
                .bind(key.secret_hash)
                .bind(key.name)
                .bind(json_list(key.scopes))
                .bind(key.rate_limit_per_minute)
                .bind(key.expires_at)
                .execute(&sqlite.writer)
                .await?;
        }
    }
    Ok(())
}

/// A key as the lookup for authentication sees it.
#[derive(Debug, Clone)]
pub struct StoredApiKey {
    pub key_id: Uuid,
    pub tenant_id: String,
    pub time_zone: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub rate_limit_per_minute: i32,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn api_key_by_prefix(
    db: &Db,
    prefix: &str,
) -> Result<Option<StoredApiKey>, StorageError> {
    const SELECT: &str = "SELECT k.key_id, k.tenant_id, t.time_zone, k.secret_hash, k.scopes,
                k.rate_limit_per_minute, k.expires_at, k.revoked_at
           FROM api_keys k JOIN tenants t USING (tenant_id)
          WHERE k.prefix = $1";
    on_pool!(db, read, pool => sqlx::query(SELECT)
        .bind(prefix)
        .fetch_optional(pool)
        .await?
        .map(|row| {
            Ok(StoredApiKey {
                key_id: row.uuid("key_id")?,
                tenant_id: row.text("tenant_id")?,
                time_zone: row.text("time_zone")?,
                secret_hash: row.bytes("secret_hash")?,
                scopes: row.strings("scopes")?,
                rate_limit_per_minute: rate_limit(&row)?,
                expires_at: row.opt_time("expires_at")?,
                revoked_at: row.opt_time("revoked_at")?,
            })
        })
        .transpose())
}

fn rate_limit(row: &impl Portable) -> Result<i32, StorageError> {
    i32::try_from(row.int("rate_limit_per_minute")?)
        .map_err(|_| StorageError::Corrupt("rate limit out of range".to_string()))
}

/// A key as its tenant's admins list it: never the secret or its hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    pub id: Uuid,
    pub prefix: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub rate_limit: i32,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

pub async fn list_api_keys(db: &Db, tenant_id: &str) -> Result<Vec<ApiKeyView>, StorageError> {
    const SELECT: &str = "SELECT key_id, prefix, name, scopes, rate_limit_per_minute, expires_at,
                revoked_at, last_used_at, created_at
           FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id";
    on_pool!(db, read, pool => sqlx::query(SELECT)
        .bind(tenant_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(ApiKeyView {
                id: row.uuid("key_id")?,
                prefix: row.text("prefix")?,
                name: row.opt_text("name")?,
                scopes: row.strings("scopes")?,
                rate_limit: rate_limit(row)?,
                expires_at: row.opt_time("expires_at")?,
                revoked_at: row.opt_time("revoked_at")?,
                last_used_at: row.opt_time("last_used_at")?,
                created_at: row.time("created_at")?,
            })
        })
        .collect())
}

/// Revokes a key of this tenant; `false` when there is no such key here.
pub async fn revoke_api_key(db: &Db, tenant_id: &str, key_id: Uuid) -> Result<bool, StorageError> {
    const REVOKE: &str = "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $3)
          WHERE tenant_id = $1 AND key_id = $2";
    let updated = match db {
        Db::Postgres(pool) => sqlx::query(REVOKE)
            .bind(tenant_id)
            .bind(key_id)
            .bind(Utc::now())
            .execute(pool)
            .await?
            .rows_affected(),
        Db::Sqlite(sqlite) => sqlx::query(REVOKE)
            .bind(tenant_id)
            .bind(key_id.to_string())
            .bind(Utc::now())
            .execute(&sqlite.writer)
            .await?
            .rows_affected(),
    };
    Ok(updated == 1)
}

/// Hits counted by one instance since its last flush: `subject` in the
/// one-minute window starting at `window_start` (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowHits {
    pub subject: String,
    pub window_start: i64,
    pub hits: i32,
}

/// Adds the hits of one instance to the shared windows in one statement
/// and answers each window's total over all instances. PostgreSQL only:
/// on SQLite one process owns the file and keeps its windows in memory,
/// so there is nothing to share (the answer is empty).
pub async fn add_hits(db: &Db, batch: &[WindowHits]) -> Result<Vec<WindowHits>, StorageError> {
    let Db::Postgres(pool) = db else {
        return Ok(Vec::new());
    };
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let subjects: Vec<&str> = batch.iter().map(|hits| hits.subject.as_str()).collect();
    let starts: Vec<i64> = batch.iter().map(|hits| hits.window_start).collect();
    let counts: Vec<i32> = batch.iter().map(|hits| hits.hits).collect();
    let rows = sqlx::query(
        "INSERT INTO rate_limit_windows (subject, window_start, hits)
         SELECT subject, to_timestamp(start::double precision), hits
           FROM UNNEST($1::text[], $2::bigint[], $3::integer[]) AS batch(subject, start, hits)
         ON CONFLICT (subject, window_start) DO UPDATE SET hits = rate_limit_windows.hits + excluded.hits
         RETURNING subject, extract(epoch FROM window_start)::bigint AS window_start, hits",
    )
    .bind(&subjects)
    .bind(&starts)
    .bind(&counts)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(WindowHits {
                subject: row.text("subject")?,
                window_start: row.int("window_start")?,
                hits: i32::try_from(row.int("hits")?).unwrap_or(i32::MAX),
            })
        })
        .collect()
}

/// Notes that keys were used (`last_used_at`, at most once a minute each).
pub async fn touch_keys(db: &Db, key_ids: &[Uuid]) -> Result<(), StorageError> {
    if key_ids.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    match db {
        Db::Postgres(pool) => {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $2
                  WHERE key_id = ANY($1) AND (last_used_at IS NULL OR last_used_at < $3)",
            )
            .bind(key_ids)
            .bind(now)
            .bind(now - chrono::Duration::minutes(1))
            .execute(pool)
            .await?;
        }
        Db::Sqlite(sqlite) => {
            let ids: Vec<String> = key_ids.iter().map(Uuid::to_string).collect();
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $2
                  WHERE key_id IN (SELECT value FROM json_each($1))
                    AND (last_used_at IS NULL OR last_used_at < $3)",
            )
            .bind(json_list(&ids))
            .bind(now)
            .bind(now - chrono::Duration::minutes(1))
            .execute(&sqlite.writer)
            .await?;
        }
    }
    Ok(())
}

/// A username's failed logins in its current window: when the window
/// began (Unix seconds) and how many.
pub async fn login_failures(db: &Db, username: &str) -> Result<Option<(i64, i32)>, StorageError> {
    const SELECT: &str = "SELECT window_start, failures FROM login_failures WHERE username = $1";
    on_pool!(db, read, pool => sqlx::query(SELECT)
        .bind(username)
        .fetch_optional(pool)
        .await?
        .map(|row| Ok((row.int("window_start")?, row.int("failures")? as i32)))
        .transpose())
}

/// Counts a failed login for `username` at `now` (Unix seconds), starting
/// a new window when the last one began `window` seconds ago or earlier.
/// Answers the window's start and its failures so far.
pub async fn record_login_failure(
    db: &Db,
    username: &str,
    now: i64,
    window: i64,
) -> Result<(i64, i32), StorageError> {
    const UPSERT: &str = "INSERT INTO login_failures (username, window_start, failures)
         VALUES ($1, $2, 1)
         ON CONFLICT (username) DO UPDATE SET
             window_start = CASE WHEN login_failures.window_start <= $2 - $3
                                 THEN excluded.window_start ELSE login_failures.window_start END,
             failures = CASE WHEN login_failures.window_start <= $2 - $3
                             THEN 1 ELSE login_failures.failures + 1 END
         RETURNING window_start, failures";
    on_pool!(db, write, pool => {
        let row = sqlx::query(UPSERT)
            .bind(username)
            .bind(now)
            .bind(window)
            .fetch_one(pool)
            .await?;
        Ok((row.int("window_start")?, row.int("failures")? as i32))
    })
}

/// Forgets a username's failed logins (after a successful one).
pub async fn clear_login_failures(db: &Db, username: &str) -> Result<(), StorageError> {
    on_pool!(db, write, pool => sqlx::query("DELETE FROM login_failures WHERE username = $1")
        .bind(username)
        .execute(pool)
        .await?
        .rows_affected());
    Ok(())
}

/// Drops windows that ended more than a minute ago, and failed logins
/// older than an hour (their 15-minute windows long over).
pub async fn prune_rate_limits(db: &Db) -> Result<u64, StorageError> {
    let old_logins = Utc::now().timestamp() - 3600;
    let logins = on_pool!(db, write, pool => sqlx::query("DELETE FROM login_failures WHERE window_start < $1")
        .bind(old_logins)
        .execute(pool)
        .await?
        .rows_affected());
    Ok(logins
        + match db {
            Db::Postgres(pool) => sqlx::query(
                "DELETE FROM rate_limit_windows WHERE window_start < now() - interval '2 minutes'",
            )
            .execute(pool)
            .await?
            .rows_affected(),
            Db::Sqlite(sqlite) => {
                sqlx::query("DELETE FROM rate_limit_windows WHERE window_start < $1")
                    .bind(Utc::now().timestamp() - 120)
                    .execute(&sqlite.writer)
                    .await?
                    .rows_affected()
            }
        })
}
