//! Configuration: defaults, then a TOML file (`--config`, or
//! `./karvon.toml` when present), then `KARVON_*` environment variables,
//! which win. Secrets are never logged (`Debug` hides them).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP API binds (`KARVON_LISTEN`).
    pub listen: String,
    /// `postgres://…` or `sqlite://…` (`KARVON_DATABASE_URL`).
    pub database_url: String,
    /// NATS server; publishing is off when unset (`KARVON_NATS_URL`).
    pub nats_url: Option<String>,
    /// Not used: each `acrel` integration names its broker
    /// (`settings.mqtt_url`). Kept so that configuration files which set
    /// it (`KARVON_MQTT_URL`) still load.
    pub mqtt_url: Option<String>,
    /// Key for signing login tokens (`KARVON_JWT_SECRET`).
    pub jwt_secret: Option<String>,
    /// tracing filter (`KARVON_LOG`).
    pub log: String,
    /// Apply migrations when `serve` starts (`KARVON_RUN_MIGRATIONS`).
    pub run_migrations: bool,
    /// Pool size for the API and command paths (`KARVON_DB_MAX_CONNECTIONS`).
    pub db_max_connections: u32,
    /// Largest request body accepted, in bytes (`KARVON_MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Requests taking longer are answered 408 (`KARVON_REQUEST_TIMEOUT_SECS`).
    pub request_timeout_secs: u64,
    /// Events per projection step (`KARVON_PROJECTION_BATCH_SIZE`).
    pub projection_batch_size: i64,
    /// Events per step when rebuilding (`KARVON_REBUILD_BATCH_SIZE`): larger
    /// steps replay faster, and nobody waits on the shadow tables.
    pub rebuild_batch_size: i64,
    /// How long a query waits for `X-Min-Position` (`KARVON_MIN_POSITION_WAIT_MS`).
    pub min_position_wait_ms: u64,
    /// Connections served at once; further ones wait in the listen backlog
    /// (`KARVON_MAX_CONNECTIONS`).
    pub max_connections: usize,
    /// A connection that has not sent a request's complete headers this
    /// long after it opened (or after its previous answer) is closed
    /// (`KARVON_HEADER_READ_TIMEOUT_MS`).
    pub header_read_timeout_ms: u64,
    /// Requests per minute over all keys and users of one tenant; 0 = no
    /// cap beyond the per-key limits (`KARVON_TENANT_RATE_LIMIT`).
    pub tenant_rate_limit: i32,
    /// Key sealing integration secrets: 32 bytes as 64 hex digits or
    /// base64 (`KARVON_SECRETS_KEY`). Unset on SQLite: `secrets.key` beside
    /// the database file is used (created, mode 0600, when missing). Unset
    /// on PostgreSQL: integrations with secrets are refused (409).
    pub secrets_key: Option<String>,
    /// Hours an applied inbound webhook id is remembered for de-duplication
    /// (`KARVON_WEBHOOK_DELIVERY_RETENTION_HOURS`, default 720 = 30 days,
    /// at least 1). Forgetting is safe once a signed redelivery would be
    /// refused as stale anyway (5 minutes either way); see
    /// `workers::delivery_retention`.
    pub webhook_delivery_retention_hours: u64,
    /// Where uploaded CommerceML files wait for their import job
    /// (`KARVON_UPLOADS_DIR`). Unset: `uploads/` beside a SQLite database,
    /// else `karvon-uploads` in the system's temporary directory.
    pub uploads_dir: Option<String>,
    /// Largest CommerceML upload (both files), in bytes
    /// (`KARVON_MAX_UPLOAD_BYTES`, default 256 MiB).
    pub max_upload_bytes: usize,
    /// Reverse proxies (CIDRs) whose `X-Forwarded-For` / `Forwarded`
    /// client address is used for limits and IP allow-lists instead of
    /// the socket's (`KARVON_TRUSTED_PROXIES`, comma-separated; default
    /// none: every forwarded header is ignored).
    pub trusted_proxies: Vec<String>,
    /// How long one `GET /api/v1/stream` stays open before it ends and the
    /// client resumes with `Last-Event-ID` (`KARVON_STREAM_LIFETIME_SECS`,
    /// default 3600).
    pub stream_lifetime_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".to_string(),
            database_url: "sqlite://./karvon-data/karvon.db".to_string(),
            nats_url: None,
            mqtt_url: None,
            jwt_secret: None,
            log: "info".to_string(),
            run_migrations: true,
            db_max_connections: 16,
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            projection_batch_size: 1000,
            rebuild_batch_size: 5000,
            min_position_wait_ms: 5000,
            max_connections: 1024,
            header_read_timeout_ms: 10_000,
            tenant_rate_limit: 0,
            secrets_key: None,
            webhook_delivery_retention_hours: 720,
            uploads_dir: None,
            max_upload_bytes: 256 * 1024 * 1024,
            trusted_proxies: Vec::new(),
            stream_lifetime_secs: 3600,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("nats_url", &self.nats_url.as_deref().map(redact_url))
            .field("mqtt_url", &self.mqtt_url.as_deref().map(redact_url))
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<set>"))
            .field("log", &self.log)
            .field("run_migrations", &self.run_migrations)
            .field("db_max_connections", &self.db_max_connections)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("projection_batch_size", &self.projection_batch_size)
            .field("rebuild_batch_size", &self.rebuild_batch_size)
            .field("min_position_wait_ms", &self.min_position_wait_ms)
            .field("max_connections", &self.max_connections)
            .field("header_read_timeout_ms", &self.header_read_timeout_ms)
            .field("tenant_rate_limit", &self.tenant_rate_limit)
            .field("secrets_key", &self.secrets_key.as_ref().map(|_| "<set>"))
            .field(
                "webhook_delivery_retention_hours",
                &self.webhook_delivery_retention_hours,
            )
            .field("uploads_dir", &self.uploads_dir)
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("stream_lifetime_secs", &self.stream_lifetime_secs)
            .finish()
    }
}

/// Hides the password in a connection URL.
pub fn redact_url(url: &str) -> String {
    // User info: `user:password@` keeps the user; a lone token (`token@`)
    // goes entirely.
    let authority = url.find("://").map(|scheme| {
        let start = scheme + 3;
        let end = url[start..]
            .find(['/', '?'])
            .map_or(url.len(), |offset| start + offset);
        (scheme, start, end)
    });
    let at = authority.and_then(|(_, start, end)| url[start..end].rfind('@').map(|at| start + at));
    let mut redacted = match (authority, at) {
        (Some((scheme, _, _)), Some(at)) => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    };
    // Query parameters that carry secrets (`?password=…`, `&sslpassword=…`).
    if let Some(query_start) = redacted.find('?') {
        let (base, query) = redacted.split_at(query_start + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _))
                    if ["password", "pass", "token", "secret"]
                        .iter()
                        .any(|word| key.to_ascii_lowercase().contains(word)) =>
                {
                    format!("{key}=***")
                }
                _ => pair.to_string(),
            })
            .collect();
        redacted = format!("{base}{}", query.join("&"));
    }
    redacted
}

impl Config {
    /// Loads the layers. `file` is `--config`; without it `./karvon.toml`
    /// is read when it exists.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let path: Option<PathBuf> = match file {
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from("karvon.toml")).filter(|path| path.exists()),
        };
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(|key| std::env::var(key).ok())?;
        Ok(config)
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        fn parsed<T: std::str::FromStr>(key: &str, value: String) -> anyhow::Result<T> {
            value
                .parse()
                .map_err(|_| anyhow::anyhow!("{key} has an invalid value"))
        }
        if let Some(value) = var("KARVON_LISTEN") {
            self.listen = value;
        }
        if let Some(value) = var("KARVON_DATABASE_URL") {
            self.database_url = value;
        }
        if let Some(value) = var("KARVON_NATS_URL") {
            self.nats_url = Some(value).filter(|value| !value.is_empty());
        }
        if let Some(value) = var("KARVON_MQTT_URL") {
            self.mqtt_url = Some(value).filter(|value| !value.is_empty());
        }
        if let Some(value) = var("KARVON_JWT_SECRET") {
            self.jwt_secret = Some(value).filter(|value| !value.is_empty());
        }
        if let Some(value) = var("KARVON_LOG") {
            self.log = value;
        }
        if let Some(value) = var("KARVON_RUN_MIGRATIONS") {
            self.run_migrations = parsed("KARVON_RUN_MIGRATIONS", value)?;
        }
        if let Some(value) = var("KARVON_DB_MAX_CONNECTIONS") {
            self.db_max_connections = parsed("KARVON_DB_MAX_CONNECTIONS", value)?;
        }
        if let Some(value) = var("KARVON_MAX_BODY_BYTES") {
            self.max_body_bytes = parsed("KARVON_MAX_BODY_BYTES", value)?;
        }
        if let Some(value) = var("KARVON_REQUEST_TIMEOUT_SECS") {
            self.request_timeout_secs = parsed("KARVON_REQUEST_TIMEOUT_SECS", value)?;
        }
        if let Some(value) = var("KARVON_PROJECTION_BATCH_SIZE") {
            self.projection_batch_size = parsed("KARVON_PROJECTION_BATCH_SIZE", value)?;
        }
        if let Some(value) = var("KARVON_REBUILD_BATCH_SIZE") {
            self.rebuild_batch_size = parsed("KARVON_REBUILD_BATCH_SIZE", value)?;
        }
        if let Some(value) = var("KARVON_MIN_POSITION_WAIT_MS") {
            self.min_position_wait_ms = parsed("KARVON_MIN_POSITION_WAIT_MS", value)?;
        }
        if let Some(value) = var("KARVON_MAX_CONNECTIONS") {
            self.max_connections = parsed("KARVON_MAX_CONNECTIONS", value)?;
        }
        if let Some(value) = var("KARVON_HEADER_READ_TIMEOUT_MS") {
            self.header_read_timeout_ms = parsed("KARVON_HEADER_READ_TIMEOUT_MS", value)?;
        }
        if let Some(value) = var("KARVON_TENANT_RATE_LIMIT") {
            self.tenant_rate_limit = parsed("KARVON_TENANT_RATE_LIMIT", value)?;
        }
        if let Some(value) = var("KARVON_SECRETS_KEY") {
            self.secrets_key = Some(value).filter(|value| !value.is_empty());
        }
        if let Some(value) = var("KARVON_WEBHOOK_DELIVERY_RETENTION_HOURS") {
            self.webhook_delivery_retention_hours =
                parsed("KARVON_WEBHOOK_DELIVERY_RETENTION_HOURS", value)?;
        }
        if let Some(value) = var("KARVON_UPLOADS_DIR") {
            self.uploads_dir = Some(value).filter(|value| !value.is_empty());
        }
        if let Some(value) = var("KARVON_MAX_UPLOAD_BYTES") {
            self.max_upload_bytes = parsed("KARVON_MAX_UPLOAD_BYTES", value)?;
        }
        if let Some(value) = var("KARVON_STREAM_LIFETIME_SECS") {
            self.stream_lifetime_secs = parsed("KARVON_STREAM_LIFETIME_SECS", value)?;
        }
        if let Some(value) = var("KARVON_TRUSTED_PROXIES") {
            self.trusted_proxies = value
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_string)
                .collect();
        }
        Ok(())
    }

    /// The trusted proxies as ranges (a plain address is its own range);
    /// the error names the entry that is neither.
    pub fn trusted_proxy_ranges(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.trusted_proxies
            .iter()
            .map(|text| {
                text.parse::<ipnet::IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "KARVON_TRUSTED_PROXIES: {text:?} is neither an address nor a CIDR range"
                        )
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_wins_over_defaults() {
        let mut config = Config::default();
        config
            .apply_env(|key| match key {
                "KARVON_LISTEN" => Some("0.0.0.0:9000".into()),
                "KARVON_MAX_BODY_BYTES" => Some("2048".into()),
                _ => None,
            })
            .expect("env");
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.max_body_bytes, 2048);
    }

    #[test]
    fn a_bad_number_is_reported_by_name() {
        let mut config = Config::default();
        let error = config
            .apply_env(|key| (key == "KARVON_DB_MAX_CONNECTIONS").then(|| "many".to_string()))
            .expect_err("must fail");
        assert!(error.to_string().contains("KARVON_DB_MAX_CONNECTIONS"));
    }

    #[test]
    fn secrets_in_query_strings_and_token_user_info_are_redacted() {
        assert_eq!(
            redact_url("postgres://db:5432/k?user=karvon&password=s3cret&sslmode=require"),
            "postgres://db:5432/k?user=karvon&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("nats://s3cr3t-token@nats:4222"),
            "nats://***@nats:4222"
        );
        assert_eq!(
            redact_url("sqlite://./karvon-data/karvon.db"),
            "sqlite://./karvon-data/karvon.db"
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://karvon:s3cret@db:5432/k"),
            "postgres://karvon:***@db:5432/k"
        );
        assert!(
            !format!(
                "{:?}",
                Config {
                    jwt_secret: Some("x".into()),
                    secrets_key: Some("x".into()),
                    ..Config::default()
                }
            )
            .contains("\"x\"")
        );
    }
}
