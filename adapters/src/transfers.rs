//! The transfer process manager: books the receiving side of a transfer.
//!
//! `POST /stock/transfers` appends `StockTransferredOut` to the source
//! stream only (one stream per transaction keeps appends simple and
//! contention low). This feed consumer then appends the matching
//! `StockTransferredIn` to the destination stream. The command is keyed by
//! the out-event's id, so a crash between the append and the checkpoint
//! repeats the command harmlessly: it answers from the idempotency log.

use std::sync::Arc;

use cqrs_es::Aggregate;
use karvon_domain::TenantId;
use karvon_domain::ids::stock_stream_id;
use karvon_domain::stock::{StockCommand, StockEvent, StockItem};
use karvon_projections::{EventMetadata, Source, names};

use crate::StorageError;
use crate::db::Conn;
use crate::feed::FeedEvent;
use crate::read_models::decode;
use crate::runner::FeedHandler;
use crate::store::{CommandError, CommandExecutor};

pub struct TransferProcess {
    stock: Arc<CommandExecutor<StockItem>>,
}

impl TransferProcess {
    pub fn new(stock: Arc<CommandExecutor<StockItem>>) -> Self {
        Self { stock }
    }
}

#[async_trait::async_trait]
impl FeedHandler for TransferProcess {
    fn name(&self) -> &'static str {
        names::TRANSFERS
    }

    async fn apply(
        &self,
        _conn: &mut Conn<'_>,
        _schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        for event in events
            .iter()
            .filter(|event| event.aggregate_type == StockItem::TYPE)
        {
            if event.event_type != "StockTransferredOut" {
                continue;
            }
            let StockEvent::StockTransferredOut {
                warehouse_id,
                product_id,
                to_warehouse_id,
                transfer_id,
                allocations,
                ..
            } = decode(event)?
            else {
                continue;
            };
            let tenant = TenantId::parse(event.metadata.tenant_id.clone())
                .map_err(|error| StorageError::Corrupt(format!("tenant id: {error}")))?;
            let metadata = EventMetadata {
                tenant_id: tenant.to_string(),
                occurred_at: event.metadata.occurred_at,
                source: Source::System.as_str().to_string(),
                actor: names::TRANSFERS.to_string(),
                correlation_id: event.metadata.correlation_id.clone(),
                causation_id: Some(event.event_id.to_string()),
                idempotency_key: Some(format!("transfer-in:{}", event.event_id)),
                request_hash: None,
                response_id: Some(transfer_id.clone()),
            };
            let command = StockCommand::TransferIn {
                warehouse_id: to_warehouse_id.clone(),
                product_id: product_id.clone(),
                from_warehouse_id: warehouse_id,
                transfer_id,
                lines: allocations,
            };
            let stream = stock_stream_id(&tenant, &to_warehouse_id, &product_id);
            match self.stock.execute(&stream, command, &metadata).await {
                Ok(_) => {}
                Err(CommandError::Storage(error)) => return Err(error),
                Err(error) => {
                    // Cannot happen for a well-formed out-event; never stall the
                    // feed on it, but make it loud.
                    tracing::error!(event_id = %event.event_id, %error, aggregate = StockItem::TYPE,
                        "transfer-in refused; the transfer needs manual attention");
                }
            }
        }
        Ok(())
    }
}
