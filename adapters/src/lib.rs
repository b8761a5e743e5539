//! Everything in Karvon that touches the outside world.
//!
//! - [`db`]: the storage seam over PostgreSQL and SQLite ([`db::Db`]);
//! - [`postgres`]: PostgreSQL pools, database creation, migrations;
//! - [`store`]: the cqrs-es/postgres-es event store behind one command
//!   executor that adds metadata, idempotency keys and feed positions;
//! - [`feed`]: the global event feed in commit-safe order;
//! - [`runner`]: the projection runner (batches + checkpoint in one
//!   transaction, advisory-lock leadership, LISTEN/NOTIFY wake-ups, rebuild
//!   and swap);
//! - [`read_models`]: the tables behind the query API and their queries;
//! - [`transfers`]: the process manager that books the receiving side of a
//!   stock transfer.

pub mod auth_store;
pub mod db;
pub mod feed;
pub mod postgres;
pub mod read_models;
pub mod runner;
pub mod store;
pub mod transfers;

/// A failure talking to storage. Its text is for logs, never for clients.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data could not be read: {0}")]
    Corrupt(String),
    #[error("event store: {0}")]
    EventStore(String),
    #[error("configuration: {0}")]
    Config(String),
}
