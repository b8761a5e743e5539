//! Read models and the projection contract.
//!
//! A projection is a pure fold over the global event feed: `(state, event)
//! -> changes`. This crate holds those folds and the vocabulary every
//! runner shares ([`Position`], [`EventMetadata`]); storing the state and
//! the checkpoint in one transaction is the adapters' job.
//!
//! The contract every runner keeps:
//! - events arrive in feed order ([`Position`] order) and each exactly once
//!   per read model: the batch's changes and the new checkpoint commit
//!   together or not at all;
//! - a projection never reads another projection's tables while folding;
//! - a read model can be dropped and rebuilt from position zero at any time.

pub mod alerts;
pub mod catalog;
pub mod customers;
pub mod jobs;
pub mod metadata;
pub mod meters;
pub mod position;
pub mod procurement;
pub mod sales;
pub mod stock;

pub use metadata::{EventMetadata, Source};
pub use position::{Position, PositionParseError, PositionToken};

/// Names of the read models fed by the global feed. Queries name the ones
/// they read when they wait for `X-Min-Position`.
pub mod names {
    pub const CATALOG: &str = "catalog";
    pub const STOCK: &str = "stock";
    pub const SALES: &str = "sales";
    pub const CUSTOMERS: &str = "customers";
    pub const PROCUREMENT: &str = "procurement";
    pub const JOBS: &str = "jobs";
    pub const METERS: &str = "meters";
    pub const ALERTS: &str = "alerts";
    /// Not a read model: the reactor that raises alerts from what happens.
    pub const ALERT_RULES: &str = "alert_rules";
    /// Not a read model: the process manager that completes transfers.
    pub const TRANSFERS: &str = "transfers";
    /// Not a read model: the reactor that makes stock follow sales.
    pub const SALES_STOCK: &str = "sales_stock";
    /// Not a read model: the reactor that receives accepted goods into stock.
    pub const RECEIPTS_STOCK: &str = "receipts_stock";
    /// Not a read model: the publisher that sends every event to NATS.
    pub const NATS_RELAY: &str = "nats_relay";
}
