//! Karvon's domain: aggregates, their commands and events, and the value
//! objects they are made of.
//!
//! Pure by design: nothing here does IO. An aggregate validates a command
//! against its own state and emits past-tense events; `apply` is a fold.
//! Events are a persisted contract: names and versions are stable, and new
//! shapes get a new `event_version` plus an upcaster, never a rewrite.

pub mod alert;
pub mod contact;
pub mod customer;
pub mod ids;
pub mod import_job;
pub mod meter;
pub mod product;
pub mod purchase_order;
pub mod sale;
pub mod stock;
pub mod supplier;
pub mod values;

pub use ids::{Id, IdError, TenantId};
pub use values::{Money, Quantity, ValueError};

/// The version every event type starts at.
pub const EVENT_VERSION_1: &str = "1";
