//! Storage for tenants, users, API keys and rate-limit windows. Only
//! hashes of secrets ever reach this module.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

use crate::StorageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub tenant_id: String,
    pub time_zone: String,
}

/// Creates a tenant; `false` when it already exists (time zone unchanged).
pub async fn create_tenant(
    pool: &PgPool,
    tenant_id: &str,
    time_zone: &str,
) -> Result<bool, StorageError> {
    let inserted = sqlx::query(
        "INSERT INTO tenants (tenant_id, time_zone) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(tenant_id)
    .bind(time_zone)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

pub async fn tenant(pool: &PgPool, tenant_id: &str) -> Result<Option<Tenant>, StorageError> {
    let row = sqlx::query("SELECT tenant_id, time_zone FROM tenants WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|row| Tenant {
        tenant_id: row.get("tenant_id"),
        time_zone: row.get("time_zone"),
    }))
}

pub struct NewUser<'a> {
    pub tenant_id: &'a str,
    pub username: &'a str,
    pub password_hash: &'a str,
    pub scopes: &'a [String],
}

/// Creates or replaces a user (a new password hash and scopes).
pub async fn upsert_user(pool: &PgPool, user: &NewUser<'_>) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO users (username, tenant_id, password_hash, scopes) VALUES ($1, $2, $3, $4)
         ON CONFLICT (username) DO UPDATE SET tenant_id = EXCLUDED.tenant_id,
             password_hash = EXCLUDED.password_hash, scopes = EXCLUDED.scopes",
    )
    .bind(user.username)
    .bind(user.tenant_id)
    .bind(user.password_hash)
    .bind(user.scopes)
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct StoredUser {
    pub username: String,
    pub tenant_id: String,
    pub password_hash: String,
    pub scopes: Vec<String>,
}

pub async fn user(pool: &PgPool, username: &str) -> Result<Option<StoredUser>, StorageError> {
    let row = sqlx::query(
        "SELECT username, tenant_id, password_hash, scopes FROM users WHERE username = $1",
    )
    .bind(username)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| StoredUser {
        username: row.get("username"),
        tenant_id: row.get("tenant_id"),
        password_hash: row.get("password_hash"),
        scopes: row.get("scopes"),
    }))
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

pub async fn insert_api_key(pool: &PgPool, key: &NewApiKey<'_>) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO api_keys (key_id, tenant_id, prefix, secret_hash, name, scopes, rate_limit_per_minute, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
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
    pool: &PgPool,
    prefix: &str,
) -> Result<Option<StoredApiKey>, StorageError> {
    let row = sqlx::query(
        "SELECT k.key_id, k.tenant_id, t.time_zone, k.secret_hash, k.scopes, k.rate_limit_per_minute,
                k.expires_at, k.revoked_at
           FROM api_keys k JOIN tenants t USING (tenant_id)
          WHERE k.prefix = $1",
    )
    .bind(prefix)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| StoredApiKey {
        key_id: row.get("key_id"),
        tenant_id: row.get("tenant_id"),
        time_zone: row.get("time_zone"),
        secret_hash: row.get("secret_hash"),
        scopes: row.get("scopes"),
        rate_limit_per_minute: row.get("rate_limit_per_minute"),
        expires_at: row.get("expires_at"),
        revoked_at: row.get("revoked_at"),
    }))
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

pub async fn list_api_keys(
    pool: &PgPool,
    tenant_id: &str,
) -> Result<Vec<ApiKeyView>, StorageError> {
    let rows = sqlx::query(
        "SELECT key_id, prefix, name, scopes, rate_limit_per_minute, expires_at, revoked_at, last_used_at, created_at
           FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, key_id",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|row| ApiKeyView {
            id: row.get("key_id"),
            prefix: row.get("prefix"),
            name: row.get("name"),
            scopes: row.get("scopes"),
            rate_limit: row.get("rate_limit_per_minute"),
            expires_at: row.get("expires_at"),
            revoked_at: row.get("revoked_at"),
            last_used_at: row.get("last_used_at"),
            created_at: row.get("created_at"),
        })
        .collect())
}

/// Revokes a key of this tenant; `false` when there is no such key here.
pub async fn revoke_api_key(
    pool: &PgPool,
    tenant_id: &str,
    key_id: Uuid,
) -> Result<bool, StorageError> {
    let updated = sqlx::query(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE tenant_id = $1 AND key_id = $2",
    )
    .bind(tenant_id)
    .bind(key_id)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(updated == 1)
}

/// Counts a hit for `subject` in the current one-minute window and, for a
/// key, notes its use (at most once a minute). Returns the hits so far and
/// the seconds until the window ends.
pub async fn hit(
    pool: &PgPool,
    subject: &str,
    key_id: Option<Uuid>,
) -> Result<(i32, i64), StorageError> {
    let row = sqlx::query(
        "WITH touched AS (
             UPDATE api_keys SET last_used_at = now()
              WHERE key_id = $2 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
          RETURNING 1)
         INSERT INTO rate_limit_windows (subject, window_start, hits)
         VALUES ($1, date_trunc('minute', now()), 1)
         ON CONFLICT (subject, window_start) DO UPDATE SET hits = rate_limit_windows.hits + 1
         RETURNING hits, ceil(extract(epoch FROM (window_start + interval '1 minute' - now())))::bigint AS retry_after",
    )
    .bind(subject)
    .bind(key_id)
    .fetch_one(pool)
    .await?;
    Ok((row.get("hits"), row.get::<i64, _>("retry_after").max(1)))
}

/// Drops windows that ended more than a minute ago.
pub async fn prune_rate_limits(pool: &PgPool) -> Result<u64, StorageError> {
    Ok(sqlx::query(
        "DELETE FROM rate_limit_windows WHERE window_start < now() - interval '2 minutes'",
    )
    .execute(pool)
    .await?
    .rows_affected())
}
