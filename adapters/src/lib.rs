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
//! - [`records`]: read-model rows declared once, stored on either backend;
//! - [`read_models`]: the tables behind the query API and their queries;
//! - [`reactions`]: the commands reactors ask for, and their dispatcher;
//! - [`integrations`]: the integration registry (settings, sealed secrets),
//!   Standard Webhooks signatures and seen webhook ids;
//! - [`registry`]: the one list of feed consumers;
//! - [`transfers`]: the reactor that books the receiving side of a stock
//!   transfer; [`sales_stock`]: the reactor that makes stock follow sales.

pub mod alert_rules;
pub mod audit;
pub mod auth_store;
pub mod db;
pub mod feed;
pub mod imports;
pub mod integrations;
pub mod mqtt;
pub mod onec;
pub mod postgres;
pub mod reactions;
pub mod read_models;
pub mod receipts_stock;
pub mod records;
pub mod registry;
pub mod regos;
pub mod relay;
pub mod runner;
pub mod sales_stock;
pub mod stock_alerts;
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
    /// A command a reactor asked for was refused by its aggregate.
    #[error("reaction refused: {0}")]
    Refused(String),
    /// A feed consumer panicked.
    #[error("consumer panicked: {0}")]
    Panicked(String),
    /// A peer (NATS, a webhook receiver) did not take the events; try later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl StorageError {
    /// True when retrying cannot help: the event itself cannot be consumed
    /// (it does not decode, breaks a constraint, its command is refused, or
    /// the consumer panics on it). A feed consumer stops on such an event;
    /// any other error is retried.
    pub fn is_poison(&self) -> bool {
        match self {
            StorageError::Corrupt(_) | StorageError::Refused(_) | StorageError::Panicked(_) => true,
            StorageError::Database(error) => error.as_database_error().is_some_and(|error| {
                use sqlx::error::ErrorKind;
                // PostgreSQL class 22: data exception (overflow, bad value).
                let data_exception = error.code().is_some_and(|code| code.starts_with("22"));
                data_exception
                    || matches!(
                        error.kind(),
                        ErrorKind::UniqueViolation
                            | ErrorKind::ForeignKeyViolation
                            | ErrorKind::NotNullViolation
                            | ErrorKind::CheckViolation
                    )
            }),
            _ => false,
        }
    }
}
