//! PostgreSQL connection set-up and migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{PgPool, Postgres};

use crate::StorageError;

/// The event-store schema, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

#[derive(Debug, Clone)]
pub struct PgSettings {
    pub url: String,
    pub max_connections: u32,
}

/// Creates the database named in `url` if it does not exist yet.
pub async fn ensure_database(url: &str) -> Result<(), StorageError> {
    if !Postgres::database_exists(url).await? {
        match Postgres::create_database(url).await {
            Ok(()) => {}
            // Another instance created it in between.
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P04") => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// The connection options `url` names. On a loopback host, and unless the
/// URL (or `PGSSLMODE`) chooses an `sslmode`, without TLS: the driver's
/// default (`prefer`) would encrypt traffic that never leaves the machine,
/// at a cost of about a tenth of the MQTT ingest rate.
fn options(url: &str) -> Result<PgConnectOptions, StorageError> {
    let options = PgConnectOptions::from_str(url)?;
    let chosen =
        url.to_ascii_lowercase().contains("sslmode=") || std::env::var_os("PGSSLMODE").is_some();
    if chosen || !is_loopback(options.get_host()) {
        return Ok(options);
    }
    Ok(options.ssl_mode(PgSslMode::Disable))
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.starts_with('/')
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub async fn connect(settings: &PgSettings) -> Result<PgPool, StorageError> {
    let options = options(&settings.url)?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // sqlx pings every connection it hands out by default: one extra
        // round trip per query. A broken connection fails its query instead
        // (answered 503, retried by the client) and is then replaced.
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// A small pool for bookkeeping whose loss in a crash is harmless (rate-limit
/// counters, last-used stamps): its commits do not wait for the WAL flush.
pub async fn connect_bookkeeping(settings: &PgSettings) -> Result<PgPool, StorageError> {
    let options = options(&settings.url)?.options([("synchronous_commit", "off")]);
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections.clamp(1, 4))
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    Ok(pool)
}

pub async fn migrate(pool: &PgPool) -> Result<(), StorageError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_connections_skip_tls_unless_asked_for() {
        let mode = |url: &str| format!("{:?}", options(url).map(|o| o.get_ssl_mode()).ok());
        assert_eq!(mode("postgres://u@127.0.0.1:5432/k"), "Some(Disable)");
        assert_eq!(mode("postgres://u@localhost/k"), "Some(Disable)");
        assert_eq!(mode("postgres://u@[::1]:5432/k"), "Some(Disable)");
        assert_eq!(
            mode("postgres://u@127.0.0.1/k?sslmode=require"),
            "Some(Require)"
        );
        if std::env::var_os("PGSSLMODE").is_none() {
            assert_eq!(mode("postgres://u@db.example.com/k"), "Some(Prefer)");
        }
    }
}
