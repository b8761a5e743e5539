//! What reactors ask for: commands, each for one aggregate stream, and the
//! dispatcher that runs them.
//!
//! A reactor only decides ([`crate::runner::Reactor::react`]); the runner
//! runs its [`Reaction`]s through [`Commands`] with no feed transaction
//! open, keyed by the reactor's name and the causing event's id, so running
//! them again after a crash changes nothing.

use std::sync::Arc;

use karvon_domain::alert::{Alert, AlertCommand};
use karvon_domain::stock::{StockCommand, StockItem};
use karvon_domain::{Id, TenantId};
use karvon_projections::{EventMetadata, Source};

use crate::StorageError;
use crate::db::Db;
use crate::feed::FeedEvent;
use crate::stock_alerts::StockAlerts;
use crate::store::{CommandError, CommandExecutor};

/// One command a reactor asks for. Add a variant per aggregate a reactor
/// commands.
#[derive(Debug, Clone)]
pub enum Reaction {
    Stock {
        stream: String,
        command: StockCommand,
        metadata: EventMetadata,
    },
    Alert {
        stream: String,
        command: AlertCommand,
        metadata: EventMetadata,
    },
    /// Judge the product's stock conditions at `warehouse` (every
    /// warehouse holding it when `None`) and open or clear their alerts
    /// ([`StockAlerts::check`]; idempotent by state, so it runs unkeyed).
    StockCheck {
        tenant: TenantId,
        product_id: Id,
        warehouse_id: Option<Id>,
        metadata: EventMetadata,
    },
}

impl Reaction {
    fn metadata_mut(&mut self) -> &mut EventMetadata {
        match self {
            Reaction::Stock { metadata, .. }
            | Reaction::Alert { metadata, .. }
            | Reaction::StockCheck { metadata, .. } => metadata,
        }
    }
}

/// The metadata of a command caused by `event`: same tenant, correlation
/// and occurrence time; `causation_id` is the event; the actor is the
/// reactor. The runner adds the idempotency key.
pub fn caused_by(event: &FeedEvent, reactor: &str, response_id: Option<String>) -> EventMetadata {
    EventMetadata {
        tenant_id: event.metadata.tenant_id.clone(),
        occurred_at: event.metadata.occurred_at,
        source: Source::System.as_str().to_string(),
        actor: reactor.to_string(),
        correlation_id: event.metadata.correlation_id.clone(),
        causation_id: Some(event.event_id.to_string()),
        idempotency_key: None,
        request_hash: None,
        response_id,
    }
}

/// Why a reaction did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReactionError {
    /// The stream was too busy; the runner retries with back-off.
    #[error("the stream is too busy")]
    Contended,
    /// The aggregate refused the command: a failure of the causing event.
    #[error(transparent)]
    Failed(StorageError),
}

/// Runs reactions: one command executor per aggregate reactors command.
#[derive(Clone)]
pub struct Commands {
    stock: Arc<CommandExecutor<StockItem>>,
    alerts: Arc<CommandExecutor<Alert>>,
    stock_alerts: StockAlerts,
}

impl Commands {
    pub fn new(db: &Db) -> Self {
        let stock = Arc::new(CommandExecutor::new(db.clone()));
        let alerts = Arc::new(CommandExecutor::new(db.clone()));
        Self {
            stock_alerts: StockAlerts::new(db, Arc::clone(&stock), Arc::clone(&alerts)),
            stock,
            alerts,
        }
    }

    /// Runs one reaction under `key` (the same key always answers the same).
    pub async fn run(&self, mut reaction: Reaction, key: String) -> Result<(), ReactionError> {
        reaction.metadata_mut().idempotency_key = Some(key);
        match reaction {
            Reaction::Stock {
                stream,
                command,
                metadata,
            } => outcome(self.stock.execute(&stream, command, &metadata).await),
            Reaction::Alert {
                stream,
                command,
                metadata,
            } => outcome(self.alerts.execute(&stream, command, &metadata).await),
            Reaction::StockCheck {
                tenant,
                product_id,
                warehouse_id,
                metadata,
            } => {
                self.stock_alerts
                    .check(&tenant, &product_id, warehouse_id.as_ref(), &metadata)
                    .await
            }
        }
    }
}

pub(crate) fn outcome<T, E: std::error::Error>(
    result: Result<T, CommandError<E>>,
) -> Result<(), ReactionError> {
    match result {
        Ok(_) => Ok(()),
        Err(CommandError::Contended) => Err(ReactionError::Contended),
        Err(CommandError::Storage(error)) => Err(ReactionError::Failed(error)),
        Err(CommandError::Domain(error)) => Err(ReactionError::Failed(StorageError::Refused(
            error.to_string(),
        ))),
        Err(CommandError::KeyReused) => Err(ReactionError::Failed(StorageError::Refused(
            "the reaction's key was already used for a different command".to_string(),
        ))),
    }
}
