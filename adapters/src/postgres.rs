//! PostgreSQL connection set-up and migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
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

pub async fn connect(settings: &PgSettings) -> Result<PgPool, StorageError> {
    let options = PgConnectOptions::from_str(&settings.url)?;
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
    let options =
        PgConnectOptions::from_str(&settings.url)?.options([("synchronous_commit", "off")]);
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
