//! Who is calling, for which tenant, with which scopes.
//!
//! Credentials: API keys (`<prefix>_<secret>`; the store keeps the prefix
//! and a SHA-256 of the secret, compared in constant time) and login tokens
//! (HS256 JWTs with `exp`, `iss`, `aud` checked and bounded clock skew).
//! The tenant comes only from the credential. Every authenticated request
//! is counted against its credential's per-minute limit in the database,
//! so the limit holds across instances; failed attempts are counted per
//! peer address (never per a header a client can set).
//!
//! Handlers state what they need in their signature: [`ReadAccess`],
//! [`WriteAccess`] or [`AdminAccess`].

use std::net::SocketAddr;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use chrono::{DateTime, Duration, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use karvon_adapters::StorageError;
use karvon_adapters::auth_store::{self, NewApiKey, NewUser};
use karvon_adapters::db::Db;
use karvon_domain::TenantId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::http::{ApiError, AppState};

pub const SCOPES: [&str; 4] = ["read", "write", "webhooks", "admin"];
/// Requests per minute for a key created without an explicit limit, for
/// login tokens, and for failed attempts from one peer address.
pub const DEFAULT_RATE_LIMIT: i32 = 60;
const ISSUER: &str = "karvon";
const AUDIENCE: &str = "karvon-api";
const TOKEN_LIFETIME_MINUTES: i64 = 60;
const CLOCK_SKEW_SECONDS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown scope {0:?} (known: read, write, webhooks, admin)")]
    UnknownScope(String),
    #[error("at least one scope is needed")]
    NoScopes,
    #[error("tenant {0} does not exist")]
    UnknownTenant(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Parses `read,write,…` into known scopes, without duplicates.
pub fn parse_scopes<'a>(
    scopes: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, AuthError> {
    let mut parsed: Vec<String> = Vec::new();
    for scope in scopes
        .into_iter()
        .map(str::trim)
        .filter(|scope| !scope.is_empty())
    {
        if !SCOPES.contains(&scope) {
            return Err(AuthError::UnknownScope(scope.to_string()));
        }
        if !parsed.iter().any(|known| known == scope) {
            parsed.push(scope.to_string());
        }
    }
    if parsed.is_empty() {
        return Err(AuthError::NoScopes);
    }
    Ok(parsed)
}

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub tenant: TenantId,
    pub time_zone: chrono_tz::Tz,
    /// `key:<id>` or `user:<name>`; goes into event metadata.
    pub actor: String,
    pub scopes: Vec<String>,
}

impl Principal {
    /// `admin` grants every scope.
    pub fn allows(&self, scope: &str) -> bool {
        self.scopes
            .iter()
            .any(|held| held == scope || held == "admin")
    }

    /// Today in the tenant's time zone.
    pub fn today(&self) -> chrono::NaiveDate {
        Utc::now().with_timezone(&self.time_zone).date_naive()
    }
}

/// Signing and checking login tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    tenant: String,
    scopes: Vec<String>,
    iss: String,
    aud: String,
    iat: i64,
    exp: i64,
}

impl TokenKeys {
    /// From the configured secret; without one, a random secret for this
    /// process only (tokens then die with it and do not work on other
    /// instances).
    pub fn new(secret: Option<&str>) -> Self {
        let secret: Vec<u8> = match secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => {
                tracing::warn!(
                    "KARVON_JWT_SECRET is not set: login tokens use a random per-process key \
                     and stop working on restart or on other instances"
                );
                let mut bytes = vec![0u8; 32];
                OsRng.fill_bytes(&mut bytes);
                bytes
            }
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = CLOCK_SKEW_SECONDS;
        Self {
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            validation,
        }
    }

    pub fn issue(
        &self,
        username: &str,
        tenant: &str,
        scopes: &[String],
    ) -> Result<(String, DateTime<Utc>), AuthError> {
        let now = Utc::now();
        let expires_at = now + Duration::minutes(TOKEN_LIFETIME_MINUTES);
        let claims = Claims {
            sub: username.to_string(),
            tenant: tenant.to_string(),
            scopes: scopes.to_vec(),
            iss: ISSUER.to_string(),
            aud: AUDIENCE.to_string(),
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|error| AuthError::Invalid(error.to_string()))?;
        Ok((token, expires_at))
    }

    fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|data| data.claims)
    }
}

/// A key as created: the only time its full text exists.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedKey {
    pub id: Uuid,
    pub key: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    pub rate_limit: i32,
    pub expires_at: Option<DateTime<Utc>>,
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buffer);
    buffer.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

pub async fn create_api_key(
    db: &Db,
    tenant: &str,
    scopes: Vec<String>,
    rate_limit: Option<i32>,
    expires_at: Option<DateTime<Utc>>,
    name: Option<&str>,
) -> Result<CreatedKey, AuthError> {
    if auth_store::tenant(db, tenant).await?.is_none() {
        return Err(AuthError::UnknownTenant(tenant.to_string()));
    }
    let rate_limit = rate_limit.unwrap_or(DEFAULT_RATE_LIMIT);
    if rate_limit < 1 {
        return Err(AuthError::Invalid(
            "rate limit must be at least 1 request per minute".into(),
        ));
    }
    let id = Uuid::now_v7();
    let prefix = format!("kv{}", random_hex(6));
    let secret = random_hex(32);
    auth_store::insert_api_key(
        db,
        &NewApiKey {
            key_id: id,
            tenant_id: tenant,
            prefix: &prefix,
            secret_hash: &secret_hash(&secret),
            name,
            scopes: &scopes,
            rate_limit_per_minute: rate_limit,
            expires_at,
        },
    )
    .await?;
    Ok(CreatedKey {
        id,
        key: format!("{prefix}_{secret}"),
        prefix,
        scopes,
        rate_limit,
        expires_at,
    })
}

pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| AuthError::Invalid(error.to_string()))
}

pub async fn create_user(
    db: &Db,
    tenant: &str,
    username: &str,
    password: &str,
    scopes: Vec<String>,
) -> Result<(), AuthError> {
    if auth_store::tenant(db, tenant).await?.is_none() {
        return Err(AuthError::UnknownTenant(tenant.to_string()));
    }
    if username.trim().is_empty() || username.len() > 128 {
        return Err(AuthError::Invalid(
            "username must be 1–128 characters".into(),
        ));
    }
    if password.chars().count() < 8 {
        return Err(AuthError::Invalid(
            "password must be at least 8 characters".into(),
        ));
    }
    let owned = password.to_string();
    let hash = tokio::task::spawn_blocking(move || hash_password(&owned))
        .await
        .map_err(|error| AuthError::Invalid(error.to_string()))??;
    auth_store::upsert_user(
        db,
        &NewUser {
            tenant_id: tenant,
            username,
            password_hash: &hash,
            scopes: &scopes,
        },
    )
    .await?;
    Ok(())
}

/// Checks a password; on an unknown user a dummy hash is checked instead so
/// the answer takes as long either way.
pub async fn verify_password(stored_hash: Option<String>, password: String) -> bool {
    const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$N8kBYpQ1bQ3qjZ9rOJ7zHqgqW0xR0yQ3lqk5m5kYy0s";
    let known = stored_hash.is_some();
    let hash = stored_hash.unwrap_or_else(|| DUMMY.to_string());
    let verified = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false);
    known && verified
}

/// API keys recently read from the store, by prefix. An entry is used for
/// at most [`KeyCache::TTL`]; a revocation through this instance drops it
/// at once, one through another instance takes effect within the TTL.
#[derive(Default)]
pub struct KeyCache {
    entries: std::sync::Mutex<
        std::collections::HashMap<String, (auth_store::StoredApiKey, std::time::Instant)>,
    >,
}

impl KeyCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(5);
    const LIMIT: usize = 10_000;

    fn get(&self, prefix: &str) -> Option<auth_store::StoredApiKey> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(prefix)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(key, _)| key.clone())
    }

    fn put(&self, prefix: &str, key: auth_store::StoredApiKey) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= Self::LIMIT {
                entries.clear();
            }
            entries.insert(prefix.to_string(), (key, std::time::Instant::now()));
        }
    }

    /// Forgets a key (after revoking it).
    pub fn forget(&self, key_id: Uuid) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, (key, _)| key.key_id != key_id);
        }
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or invalid credentials",
    )
}

fn rate_limited(retry_after: i64) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; retry later",
    );
    error.retry_after = Some(retry_after as u64);
    error
}

/// Counts a request for `subject`; refuses it beyond `limit` per minute.
pub async fn count_request(
    db: &Db,
    subject: &str,
    key_id: Option<Uuid>,
    limit: i32,
) -> Result<(), ApiError> {
    let (hits, retry_after) = auth_store::hit(db, subject, key_id).await?;
    if hits > limit {
        return Err(rate_limited(retry_after));
    }
    Ok(())
}

pub fn peer_subject(parts: &Parts) -> String {
    match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(address)) => format!("peer:{}", address.ip()),
        None => "peer:unknown".to_string(),
    }
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim);
    let verified = match token {
        Some(token) if token.matches('.').count() == 2 => verify_token(state, token).await?,
        Some(token) => verify_key(state, token).await?,
        None => None,
    };
    let Some((principal, subject, key_id, limit)) = verified else {
        // Failed attempts are limited per peer address.
        count_request(
            &state.bookkeeping,
            &peer_subject(parts),
            None,
            DEFAULT_RATE_LIMIT,
        )
        .await?;
        return Err(unauthorized());
    };
    count_request(&state.bookkeeping, &subject, key_id, limit).await?;
    Ok(principal)
}

type Verified = Option<(Principal, String, Option<Uuid>, i32)>;

async fn verify_key(state: &AppState, token: &str) -> Result<Verified, ApiError> {
    let Some((prefix, secret)) = token.split_once('_') else {
        return Ok(None);
    };
    let stored = match state.keys.get(prefix) {
        Some(stored) => stored,
        None => {
            let Some(stored) = auth_store::api_key_by_prefix(&state.db, prefix).await? else {
                return Ok(None);
            };
            state.keys.put(prefix, stored.clone());
            stored
        }
    };
    let matches: bool = secret_hash(secret).ct_eq(&stored.secret_hash).into();
    let expired = stored.expires_at.is_some_and(|at| at <= Utc::now());
    if !matches || stored.revoked_at.is_some() || expired {
        return Ok(None);
    }
    let principal = principal(
        &stored.tenant_id,
        &stored.time_zone,
        format!("key:{}", stored.key_id),
        stored.scopes,
    )?;
    Ok(Some((
        principal,
        format!("key:{}", stored.key_id),
        Some(stored.key_id),
        stored.rate_limit_per_minute,
    )))
}

async fn verify_token(state: &AppState, token: &str) -> Result<Verified, ApiError> {
    let Some(claims) = state.tokens.verify(token) else {
        return Ok(None);
    };
    let Some(tenant) = auth_store::tenant(&state.db, &claims.tenant).await? else {
        return Ok(None);
    };
    let subject = format!("user:{}", claims.sub);
    let principal = principal(
        &tenant.tenant_id,
        &tenant.time_zone,
        subject.clone(),
        claims.scopes,
    )?;
    Ok(Some((principal, subject, None, DEFAULT_RATE_LIMIT)))
}

fn principal(
    tenant: &str,
    time_zone: &str,
    actor: String,
    scopes: Vec<String>,
) -> Result<Principal, ApiError> {
    let tenant = TenantId::parse(tenant).map_err(|_| ApiError::internal())?;
    let time_zone = time_zone.parse().unwrap_or(chrono_tz::UTC);
    Ok(Principal {
        tenant,
        time_zone,
        actor,
        scopes,
    })
}

macro_rules! access {
    ($name:ident, $scope:literal) => {
        #[doc = concat!("A caller holding the `", $scope, "` scope.")]
        pub struct $name(pub Principal);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, Self::Rejection> {
                let principal = authenticate(parts, state).await?;
                if !principal.allows($scope) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        concat!("this credential lacks the ", $scope, " scope"),
                    ));
                }
                Ok(Self(principal))
            }
        }
    };
}

access!(ReadAccess, "read");
access!(WriteAccess, "write");
access!(AdminAccess, "admin");

/// Shared by the login handler.
pub fn shared_tokens(secret: Option<&str>) -> Arc<TokenKeys> {
    Arc::new(TokenKeys::new(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_are_checked_and_deduplicated() {
        assert_eq!(
            parse_scopes("read, write,read".split(',')).expect("ok"),
            ["read", "write"]
        );
        assert!(matches!(
            parse_scopes("read,root".split(',')),
            Err(AuthError::UnknownScope(_))
        ));
        assert!(matches!(
            parse_scopes("".split(',')),
            Err(AuthError::NoScopes)
        ));
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let keys = TokenKeys::new(Some("a-test-secret-that-is-long-enough"));
        let (token, _) = keys
            .issue("ali", "default", &["read".to_string()])
            .expect("issue");
        assert_eq!(
            keys.verify(&token).map(|claims| claims.sub),
            Some("ali".to_string())
        );
        let other = TokenKeys::new(Some("another-secret-entirely-different"));
        assert!(other.verify(&token).is_none());
    }

    #[test]
    fn passwords_hash_with_argon2id() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse"));
    }
}
