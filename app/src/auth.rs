//! Who is calling, for which tenant, with which scopes.
//!
//! Credentials: API keys (`<prefix>_<secret>`; the store keeps the prefix
//! and a SHA-256 of the secret, compared in constant time) and login tokens
//! (HS256 JWTs with `exp`, `iss`, `aud` checked and bounded clock skew).
//! The tenant comes only from the credential. Every authenticated request
//! is counted against its credential's per-minute limit (and, when
//! configured, its tenant's), failed attempts against the peer address
//! (never a header a client can set). Counting is in memory
//! ([`RateLimiter`]); on PostgreSQL the counts are shared through the
//! database in batches, so limits hold across instances.
//!
//! [`Authenticator`] is the service the HTTP layer asks: it takes the
//! bearer credential and the peer address as plain strings and answers a
//! [`Principal`] or an [`AuthFailure`]; it knows nothing of HTTP (the axum
//! extractors live in `http::access`, the mapping to answers in
//! `http::error`).

use argon2::Argon2;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
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

pub const SCOPES: [&str; 5] = ["read", "write", "webhooks", "admin", "operator"];
/// Platform operations (feed consumers of every tenant): granted only by
/// the CLI, never implied by `admin`.
pub const OPERATOR: &str = "operator";
/// Requests per minute for a key created without an explicit limit, for
/// login tokens, and for failed attempts from one peer address.
pub const DEFAULT_RATE_LIMIT: i32 = 60;
const ISSUER: &str = "karvon";
const AUDIENCE: &str = "karvon-api";
const TOKEN_LIFETIME_MINUTES: i64 = 60;
const CLOCK_SKEW_SECONDS: u64 = 30;
/// Failed logins for one username within [`LOGIN_WINDOW_SECONDS`] after
/// which it answers 429 until the window ends (SPEC §3).
pub const LOGIN_FAILURES: i32 = 10;
pub const LOGIN_WINDOW_SECONDS: i64 = 15 * 60;
/// Password verifications (Argon2, ~19 MiB each) running at once; others
/// wait up to [`ARGON2_WAIT`], then answer 429.
const ARGON2_CONCURRENCY: usize = 4;
const ARGON2_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Key lookups in flight at most, and how long a request waits for one.
const LOOKUPS: usize = 8;
const LOOKUP_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a user record read for a login token is trusted.
const USER_TTL: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("unknown scope {0:?} (known: read, write, webhooks, admin, operator)")]
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
    /// The credential's own limit, requests per minute.
    pub rate_limit: i32,
}

impl Principal {
    /// `admin` grants every scope of its tenant; `operator` only when held.
    pub fn allows(&self, scope: &str) -> bool {
        self.scopes
            .iter()
            .any(|held| held == scope || (held == "admin" && scope != OPERATOR))
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
    /// The scopes at issue (informative: a request takes the scopes of
    /// the user record, see [`Authenticator::authenticate`]).
    scopes: Vec<String>,
    /// Fingerprint of the user's password hash at issue ([`user_version`]):
    /// a re-created user or a new password (a new salt) ends the token.
    #[serde(default)]
    ver: String,
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
        version: &str,
    ) -> Result<(String, DateTime<Utc>), AuthError> {
        let now = Utc::now();
        let expires_at = now + Duration::minutes(TOKEN_LIFETIME_MINUTES);
        let claims = Claims {
            sub: username.to_string(),
            tenant: tenant.to_string(),
            scopes: scopes.to_vec(),
            ver: version.to_string(),
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
    let saved = auth_store::upsert_user(
        db,
        &NewUser {
            tenant_id: tenant,
            username,
            password_hash: &hash,
            scopes: &scopes,
        },
    )
    .await?;
    if !saved {
        return Err(AuthError::Invalid(format!(
            "username {username:?} is taken by another tenant (usernames are unique across the installation)"
        )));
    }
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
/// Prefixes the store did not know are remembered for
/// [`KeyCache::UNKNOWN_TTL`], so repeating a bad key costs no lookup (key
/// prefixes are random, so a key created meanwhile never has one of them).
/// Both maps hold at most [`KeyCache::LIMIT`] entries.
#[derive(Default)]
pub struct KeyCache {
    entries: std::sync::Mutex<
        std::collections::HashMap<String, (auth_store::StoredApiKey, std::time::Instant)>,
    >,
    unknown: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// What the cache knows of a prefix.
enum Cached {
    Key(auth_store::StoredApiKey),
    Unknown,
    Missing,
}

impl KeyCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(5);
    pub const UNKNOWN_TTL: std::time::Duration = std::time::Duration::from_secs(30);
    const LIMIT: usize = 10_000;

    fn get(&self, prefix: &str) -> Cached {
        if let Ok(entries) = self.entries.lock()
            && let Some((key, _)) = entries
                .get(prefix)
                .filter(|(_, at)| at.elapsed() < Self::TTL)
        {
            return Cached::Key(key.clone());
        }
        if let Ok(unknown) = self.unknown.lock()
            && unknown
                .get(prefix)
                .is_some_and(|at| at.elapsed() < Self::UNKNOWN_TTL)
        {
            return Cached::Unknown;
        }
        Cached::Missing
    }

    fn put(&self, prefix: &str, key: auth_store::StoredApiKey) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= Self::LIMIT {
                entries.clear();
            }
            entries.insert(prefix.to_string(), (key, std::time::Instant::now()));
        }
    }

    fn put_unknown(&self, prefix: &str) {
        if let Ok(mut unknown) = self.unknown.lock() {
            if unknown.len() >= Self::LIMIT {
                unknown.retain(|_, at| at.elapsed() < Self::UNKNOWN_TTL);
                if unknown.len() >= Self::LIMIT {
                    unknown.clear();
                }
            }
            unknown.insert(prefix.to_string(), std::time::Instant::now());
        }
    }

    /// Forgets a key (after revoking it).
    pub fn forget(&self, key_id: Uuid) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|_, (key, _)| key.key_id != key_id);
        }
    }
}

/// Whether `prefix` has the shape of the prefixes Karvon creates
/// (`kv` and 12 lowercase hex digits); others are refused unlooked-up.
fn plausible_prefix(prefix: &str) -> bool {
    prefix.len() == 14
        && prefix.starts_with("kv")
        && prefix[2..]
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

/// Seconds of the Unix epoch at which the current one-minute window began.
fn window_start(now: i64) -> i64 {
    now - now.rem_euclid(60)
}

fn epoch_seconds() -> i64 {
    Utc::now().timestamp()
}

/// One subject's count in the current window.
#[derive(Debug, Default)]
struct Window {
    start: i64,
    /// Hits admitted here and not yet sent to the shared windows.
    local: i32,
    /// Hits sent, not yet answered.
    in_flight: i32,
    /// The shared total (every instance) as last answered, ours included.
    shared: i32,
    /// The key counted under this subject, noted as used once per window.
    key_id: Option<Uuid>,
    key_touched: bool,
}

impl Window {
    fn count(&self) -> i32 {
        self.shared
            .saturating_add(self.in_flight)
            .saturating_add(self.local)
    }
}

/// A subject to count a request under, and its limit per minute.
pub struct Charge<'a> {
    pub subject: &'a str,
    pub key_id: Option<Uuid>,
    pub limit: i32,
}

/// Fixed one-minute request windows per subject (a key, a user, a tenant,
/// a peer address), decided in memory: a request costs no database work.
///
/// On SQLite the windows live only here: one process owns the file, so one
/// process sees every request. On PostgreSQL the windows are also shared
/// through `rate_limit_windows`, so limits hold across instances: every
/// [`RateLimiter::FLUSH_INTERVAL`] (sooner when a subject gathers
/// [`RateLimiter::FLUSH_HITS`] hits) one statement adds this instance's
/// new hits and answers the totals, and a request is decided on the last
/// total answered plus the hits counted here since. Between two flushes an
/// instance does not see the others' hits, so with `n` instances a subject
/// can get up to about `n - 1` flush intervals' worth of requests (and at
/// most `FLUSH_HITS` each) beyond its limit; a flush that fails keeps its
/// hits for the next one, and hits not yet flushed when a process stops
/// are forgotten.
///
/// Memory is bounded: at most [`RateLimiter::MAX_SUBJECTS`] windows; when
/// full, windows of past minutes go first, then every window (their counts
/// restart, on PostgreSQL until the next flush answers the totals).
pub struct RateLimiter {
    windows: std::sync::Mutex<std::collections::HashMap<String, Window>>,
    flush_now: tokio::sync::Notify,
}

impl RateLimiter {
    pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
    pub const FLUSH_HITS: i32 = 32;
    const MAX_SUBJECTS: usize = 100_000;

    fn new() -> Self {
        Self {
            windows: std::sync::Mutex::default(),
            flush_now: tokio::sync::Notify::new(),
        }
    }

    fn windows(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Window>> {
        self.windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one request under every charge, or under none: a request
    /// over any of the limits is refused (and not counted) with the
    /// seconds until the window ends.
    pub fn admit(&self, charges: &[Charge<'_>]) -> Result<(), AuthFailure> {
        let now = epoch_seconds();
        let start = window_start(now);
        let retry_after = (start + 60 - now).max(1) as u64;
        let mut windows = self.windows();
        for charge in charges {
            let count = windows
                .get(charge.subject)
                .filter(|window| window.start == start)
                .map_or(0, Window::count);
            if count >= charge.limit {
                return Err(AuthFailure::RateLimited { retry_after });
            }
        }
        if windows.len() + charges.len() > Self::MAX_SUBJECTS {
            // Stale windows first, then this minute's failed-attempt
            // windows (peers, prefixes); a credential's window never goes,
            // so nobody's failures can reset a key's count.
            windows.retain(|_, window| window.start == start);
            if windows.len() + charges.len() > Self::MAX_SUBJECTS {
                tracing::warn!(
                    "rate-limit windows full: forgetting this minute's failed-attempt counts"
                );
                windows.retain(|subject, _| !is_failure_subject(subject));
            }
        }
        let mut flush = false;
        for charge in charges {
            let window = windows.entry(charge.subject.to_string()).or_default();
            if window.start != start {
                *window = Window {
                    start,
                    ..Window::default()
                };
            }
            window.local += 1;
            if charge.key_id.is_some() {
                window.key_id = charge.key_id;
            }
            flush |= window.local >= Self::FLUSH_HITS;
        }
        drop(windows);
        if flush {
            self.flush_now.notify_one();
        }
        Ok(())
    }

    /// The seconds until `subject` may be counted again, when it is at or
    /// over `limit` in this window; counts nothing.
    pub fn over(&self, subject: &str, limit: i32) -> Option<u64> {
        let now = epoch_seconds();
        let start = window_start(now);
        let windows = self.windows();
        let window = windows
            .get(subject)
            .filter(|window| window.start == start)?;
        (window.count() >= limit).then(|| (start + 60 - now).max(1) as u64)
    }

    /// Sends the hits counted since the last flush to the shared windows
    /// (PostgreSQL) and notes keys used for the first time this window.
    async fn flush(&self, db: &Db) {
        let now = epoch_seconds();
        let start = window_start(now);
        let mut batch = Vec::new();
        let mut keys = Vec::new();
        {
            let mut windows = self.windows();
            windows.retain(|_, window| window.start >= start - 60);
            for (subject, window) in windows.iter_mut() {
                if let Some(key_id) = window.key_id.filter(|_| !window.key_touched) {
                    window.key_touched = true;
                    keys.push(key_id);
                }
                if db.backend() == karvon_adapters::db::Backend::Postgres
                    && window.local > 0
                    && window.in_flight == 0
                {
                    window.in_flight = window.local;
                    window.local = 0;
                    batch.push(auth_store::WindowHits {
                        subject: subject.clone(),
                        window_start: window.start,
                        hits: window.in_flight,
                    });
                }
            }
        }
        if let Err(error) = auth_store::touch_keys(db, &keys).await {
            tracing::debug!(%error, "noting API key use failed");
        }
        if batch.is_empty() {
            return;
        }
        let answered = auth_store::add_hits(db, &batch).await;
        let mut windows = self.windows();
        match answered {
            Ok(totals) => {
                for total in totals {
                    if let Some(window) = windows
                        .get_mut(&total.subject)
                        .filter(|window| window.start == total.window_start)
                    {
                        window.shared = window.shared.max(total.hits);
                    }
                }
                for sent in &batch {
                    if let Some(window) = windows
                        .get_mut(&sent.subject)
                        .filter(|window| window.start == sent.window_start)
                    {
                        window.in_flight = 0;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "sharing rate-limit counts failed; retrying with the next flush");
                for sent in &batch {
                    if let Some(window) = windows
                        .get_mut(&sent.subject)
                        .filter(|window| window.start == sent.window_start)
                    {
                        window.local += window.in_flight;
                        window.in_flight = 0;
                    }
                }
            }
        }
    }

    /// Flushes until the limiter is dropped (the application with it).
    fn spawn_flusher(limiter: &std::sync::Arc<Self>, db: Db) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let limiter = std::sync::Arc::downgrade(limiter);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Self::FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let Some(notified) = limiter.upgrade() else {
                    return;
                };
                tokio::select! {
                    _ = tick.tick() => {}
                    () = notified.flush_now.notified() => {}
                }
                notified.flush(&db).await;
            }
        });
    }
}

/// Why a request or a login attempt was refused. Only `Storage` and
/// `Internal` are failures of Karvon; the others are answers to the caller.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    /// No credential, or one that is unknown, wrong, expired or revoked.
    #[error("missing or invalid credentials")]
    Unauthenticated,
    /// A login with an unknown username or a wrong password.
    #[error("invalid username or password")]
    WrongPassword,
    /// A valid credential without the scope the operation needs.
    #[error("this credential lacks the {0} scope")]
    MissingScope(&'static str),
    /// Over the per-minute limit of the credential (or of the peer address,
    /// for failed attempts).
    #[error("too many requests; retry later")]
    RateLimited {
        /// Seconds until the current window ends.
        retry_after: u64,
    },
    /// Stored credential data that cannot be used, or a token that could
    /// not be signed; never shown to the caller.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// A login token as issued.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

/// Checks credentials and counts requests against their rate limits.
/// Shared by every request of one instance (it caches API keys and keeps
/// the rate-limit windows).
pub struct Authenticator {
    /// Tenants, users and keys.
    db: Db,
    tokens: TokenKeys,
    keys: KeyCache,
    limits: std::sync::Arc<RateLimiter>,
    /// Requests per minute over all credentials of one tenant (0: none).
    tenant_limit: i32,
    /// Bounds the Argon2 verifications in flight (memory and CPU).
    password_checks: tokio::sync::Semaphore,
    /// Bounds the key lookups in flight.
    lookups: tokio::sync::Semaphore,
    /// Users recently read, by username (`None`: no such user).
    users: std::sync::Mutex<
        std::collections::HashMap<String, (Option<auth_store::StoredUser>, std::time::Instant)>,
    >,
}

/// What a verified credential stands for: the principal, the subject its
/// requests are counted under, the key (if it is one) and its limit.
type Verified = Option<(Principal, String, Option<Uuid>, i32)>;

impl Authenticator {
    /// `jwt_secret` signs login tokens; see [`TokenKeys::new`] for `None`.
    /// `bookkeeping` receives the shared rate-limit counts (asynchronous
    /// commit on PostgreSQL: a crash may forget a few hits, never a
    /// credential or an event); `tenant_limit` caps the requests per minute
    /// of all of a tenant's credentials together (0: no cap).
    pub fn new(db: Db, bookkeeping: Db, jwt_secret: Option<&str>, tenant_limit: i32) -> Self {
        let limits = std::sync::Arc::new(RateLimiter::new());
        RateLimiter::spawn_flusher(&limits, bookkeeping);
        Self {
            db,
            tokens: TokenKeys::new(jwt_secret),
            keys: KeyCache::default(),
            limits,
            tenant_limit,
            password_checks: tokio::sync::Semaphore::new(ARGON2_CONCURRENCY),
            lookups: tokio::sync::Semaphore::new(LOOKUPS),
            users: std::sync::Mutex::default(),
        }
    }

    /// Who `bearer` (an API key or a login token, without the `Bearer `
    /// prefix) is, holding `scope`. The request is counted against the
    /// credential's limit; without a valid credential it is counted against
    /// `peer` (the caller's address) instead. A missing scope is checked
    /// after counting, so refused requests count too.
    pub async fn authorize(
        &self,
        bearer: Option<&str>,
        peer: &str,
        scope: &'static str,
    ) -> Result<Principal, AuthFailure> {
        let principal = self.authenticate(bearer, peer).await?;
        if !principal.allows(scope) {
            return Err(AuthFailure::MissingScope(scope));
        }
        Ok(principal)
    }

    /// Who `bearer` is, counting the request (see [`Self::authorize`]).
    ///
    /// No request costs a database write, and a failed one costs at most a
    /// key lookup: a peer at its limit of failed attempts is refused before
    /// any lookup (only credentials this instance can check from memory —
    /// a cached key, a token's signature — still get through), and
    /// prefixes the store did not know are remembered for a while.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        peer: &str,
    ) -> Result<Principal, AuthFailure> {
        let peer = peer_subject(peer);
        let verified = match bearer {
            Some(token) if token.matches('.').count() == 2 => self.verify_token(token).await?,
            Some(token) => self.verify_key(token).await?,
            None => None,
        };
        let Some((principal, subject, key_id, limit)) = verified else {
            // Failed attempts are limited per peer address and per key
            // prefix; a correct credential was verified above whatever
            // they count, so someone else's failures never refuse it.
            let prefix = bearer
                .and_then(|token| token.split_once('_'))
                .map(|(prefix, _)| prefix)
                .filter(|prefix| plausible_prefix(prefix))
                .map(|prefix| format!("prefix:{prefix}"));
            let mut charges = vec![Charge {
                subject: &peer,
                key_id: None,
                limit: DEFAULT_RATE_LIMIT,
            }];
            if let Some(prefix) = &prefix {
                charges.push(Charge {
                    subject: prefix,
                    key_id: None,
                    limit: DEFAULT_RATE_LIMIT,
                });
            }
            self.limits.admit(&charges)?;
            return Err(AuthFailure::Unauthenticated);
        };
        let tenant = format!("tenant:{}", principal.tenant.as_str());
        let mut charges = vec![Charge {
            subject: &subject,
            key_id,
            limit,
        }];
        if self.tenant_limit > 0 {
            charges.push(Charge {
                subject: &tenant,
                key_id: None,
                limit: self.tenant_limit,
            });
        }
        self.limits.admit(&charges)?;
        Ok(principal)
    }

    /// Refuses a peer already over its limit of failed attempts (for a
    /// check that costs work, such as a webhook's shared secret).
    pub fn refuse_failing_peer(&self, peer: &str) -> Result<(), AuthFailure> {
        match self.limits.over(&peer_subject(peer), DEFAULT_RATE_LIMIT) {
            Some(retry_after) => Err(AuthFailure::RateLimited { retry_after }),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt of `peer` (a wrong shared secret); refused
    /// 429 when that takes it over its limit.
    pub fn count_failed_attempt(&self, peer: &str) -> Result<(), AuthFailure> {
        self.limits.admit(&[Charge {
            subject: &peer_subject(peer),
            key_id: None,
            limit: DEFAULT_RATE_LIMIT,
        }])
    }

    /// Exchanges a username and password for a login token. A correct
    /// password is always verified and answered, whatever others behind
    /// the same address failed; a failed attempt counts against `peer`
    /// (past its limit, failures answer 429). A username with
    /// [`LOGIN_FAILURES`] failed logins in its window answers 429 until the
    /// window ends, whoever asks (the failures are in the store, so every
    /// instance sees them; known and unknown usernames alike). At most
    /// [`ARGON2_CONCURRENCY`] passwords are checked at once. An unknown user
    /// takes as long to refuse as a wrong password.
    pub async fn login(
        &self,
        username: &str,
        password: String,
        peer: &str,
    ) -> Result<IssuedToken, AuthFailure> {
        if username.is_empty() || username.len() > 128 {
            // No such user can exist (see `create_user`).
            self.count_failed_attempt(peer)?;
            return Err(AuthFailure::WrongPassword);
        }
        let now = epoch_seconds();
        let failed_before = auth_store::login_failures(&self.db, username).await?;
        if let Some((start, failures)) = failed_before {
            let ends = start + LOGIN_WINDOW_SECONDS;
            if failures >= LOGIN_FAILURES && ends > now {
                return Err(AuthFailure::RateLimited {
                    retry_after: (ends - now) as u64,
                });
            }
        }
        let user = auth_store::user(&self.db, username).await?;
        let Ok(Ok(permit)) =
            tokio::time::timeout(ARGON2_WAIT, self.password_checks.acquire()).await
        else {
            return Err(AuthFailure::RateLimited { retry_after: 1 });
        };
        let verified = verify_password(
            user.as_ref().map(|user| user.password_hash.clone()),
            password,
        )
        .await;
        drop(permit);
        let Some(user) = user.filter(|_| verified) else {
            auth_store::record_login_failure(&self.db, username, now, LOGIN_WINDOW_SECONDS).await?;
            self.count_failed_attempt(peer)?;
            return Err(AuthFailure::WrongPassword);
        };
        if failed_before.is_some() {
            auth_store::clear_login_failures(&self.db, username).await?;
        }
        let (token, expires_at) = self
            .tokens
            .issue(
                &user.username,
                &user.tenant_id,
                &user.scopes,
                &user_version(&user.password_hash),
            )
            .map_err(|error| AuthFailure::Internal(format!("could not sign a token: {error}")))?;
        Ok(IssuedToken { token, expires_at })
    }

    /// Revokes a key of `tenant`; `false` when the tenant has no such key.
    /// This instance stops accepting it at once, others within
    /// [`KeyCache::TTL`].
    pub async fn revoke_api_key(&self, tenant: &str, key_id: Uuid) -> Result<bool, StorageError> {
        let revoked = auth_store::revoke_api_key(&self.db, tenant, key_id).await?;
        if revoked {
            self.keys.forget(key_id);
        }
        Ok(revoked)
    }

    async fn verify_key(&self, token: &str) -> Result<Verified, AuthFailure> {
        let Some((prefix, secret)) = token.split_once('_') else {
            return Ok(None);
        };
        if !plausible_prefix(prefix) {
            return Ok(None);
        }
        let stored = match self.keys.get(prefix) {
            Cached::Key(stored) => stored,
            Cached::Unknown => return Ok(None),
            Cached::Missing => {
                // The one piece of database work a failed attempt can
                // cost: a point lookup, at most LOOKUPS at once (callers
                // wait their turn; none is refused), and an unknown
                // prefix is remembered so repeating it costs nothing.
                let Ok(Ok(_turn)) = tokio::time::timeout(LOOKUP_WAIT, self.lookups.acquire()).await
                else {
                    return Err(AuthFailure::RateLimited { retry_after: 1 });
                };
                if let Cached::Key(stored) = self.keys.get(prefix) {
                    stored
                } else {
                    let Some(stored) = auth_store::api_key_by_prefix(&self.db, prefix).await?
                    else {
                        self.keys.put_unknown(prefix);
                        return Ok(None);
                    };
                    self.keys.put(prefix, stored.clone());
                    stored
                }
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
            stored.rate_limit_per_minute,
        )?;
        Ok(Some((
            principal,
            format!("key:{}", stored.key_id),
            Some(stored.key_id),
            stored.rate_limit_per_minute,
        )))
    }

    /// A login token is good while its user exists as it was when the
    /// token was issued (same tenant, same password hash); the scopes are
    /// the user record's now. Users are read at most every
    /// [`USER_TTL`] per instance, so a deleted or changed user's tokens
    /// end within that.
    async fn verify_token(&self, token: &str) -> Result<Verified, AuthFailure> {
        let Some(claims) = self.tokens.verify(token) else {
            return Ok(None);
        };
        let Some(user) = self.user(&claims.sub).await? else {
            return Ok(None);
        };
        let version = user_version(&user.password_hash);
        let same: bool = version.as_bytes().ct_eq(claims.ver.as_bytes()).into();
        if !same || user.tenant_id != claims.tenant {
            return Ok(None);
        }
        let Some(tenant) = auth_store::tenant(&self.db, &user.tenant_id).await? else {
            return Ok(None);
        };
        let subject = format!("user:{}", claims.sub);
        let principal = principal(
            &tenant.tenant_id,
            &tenant.time_zone,
            subject.clone(),
            user.scopes,
            DEFAULT_RATE_LIMIT,
        )?;
        Ok(Some((principal, subject, None, DEFAULT_RATE_LIMIT)))
    }

    /// The user record, from memory when read less than [`USER_TTL`] ago.
    async fn user(&self, username: &str) -> Result<Option<auth_store::StoredUser>, AuthFailure> {
        if let Ok(users) = self.users.lock()
            && let Some((user, _)) = users
                .get(username)
                .filter(|(_, at)| at.elapsed() < USER_TTL)
        {
            return Ok(user.clone());
        }
        let user = auth_store::user(&self.db, username).await?;
        if let Ok(mut users) = self.users.lock() {
            if users.len() >= 10_000 {
                users.retain(|_, (_, at)| at.elapsed() < USER_TTL);
                if users.len() >= 10_000 {
                    users.clear();
                }
            }
            users.insert(
                username.to_string(),
                (user.clone(), std::time::Instant::now()),
            );
        }
        Ok(user)
    }
}

/// A short fingerprint of a stored password hash (its salt is random, so
/// every new password or re-created user gives another).
fn user_version(password_hash: &str) -> String {
    Sha256::digest(password_hash.as_bytes())[..12]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The subject failed attempts from one peer address are counted under.
fn peer_subject(peer: &str) -> String {
    format!("peer:{peer}")
}

/// Whether `subject` counts failed attempts (a peer, a key prefix) rather
/// than a credential's or a tenant's requests.
fn is_failure_subject(subject: &str) -> bool {
    subject.starts_with("peer:") || subject.starts_with("prefix:")
}

fn principal(
    tenant: &str,
    time_zone: &str,
    actor: String,
    scopes: Vec<String>,
    rate_limit: i32,
) -> Result<Principal, AuthFailure> {
    let tenant = TenantId::parse(tenant)
        .map_err(|error| AuthFailure::Internal(format!("stored tenant id {tenant:?}: {error}")))?;
    let time_zone = time_zone.parse().unwrap_or(chrono_tz::UTC);
    Ok(Principal {
        tenant,
        time_zone,
        actor,
        scopes,
        rate_limit,
    })
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
            .issue("ali", "default", &["read".to_string()], "v1")
            .expect("issue");
        assert_eq!(
            keys.verify(&token).map(|claims| claims.sub),
            Some("ali".to_string())
        );
        let other = TokenKeys::new(Some("another-secret-entirely-different"));
        assert!(other.verify(&token).is_none());
    }

    #[test]
    fn a_full_limiter_forgets_failed_attempts_never_a_keys_count() {
        // Stay inside one one-minute window.
        if epoch_seconds().rem_euclid(60) >= 57 {
            std::thread::sleep(std::time::Duration::from_secs(4));
        }
        let limiter = RateLimiter::new();
        let key = Uuid::now_v7();
        let subject = format!("key:{key}");
        let as_key = [Charge {
            subject: &subject,
            key_id: Some(key),
            limit: 5,
        }];
        // A key at 3 of its 5 requests this minute.
        for _ in 0..3 {
            limiter.admit(&as_key).expect("admitted");
        }
        // An attacker fills the limiter with failed attempts of invented peers.
        for n in 0..RateLimiter::MAX_SUBJECTS + 10 {
            let peer = format!("peer:10.{n}");
            let _ = limiter.admit(&[Charge {
                subject: &peer,
                key_id: None,
                limit: 60,
            }]);
        }
        // The key's count survived: two more, then refused.
        for _ in 0..2 {
            assert!(limiter.admit(&as_key).is_ok());
        }
        assert!(matches!(
            limiter.admit(&as_key),
            Err(AuthFailure::RateLimited { .. })
        ));
    }

    #[test]
    fn passwords_hash_with_argon2id() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains("correct horse"));
    }
}
