//! The transfer reactor: books the receiving side of a transfer.
//!
//! `POST /stock/transfers` appends `StockTransferredOut` to the source
//! stream only (one stream per transaction keeps appends simple and
//! contention low). This reactor answers each with the matching
//! `TransferIn` command on the destination stream. The runner keys it by
//! the out-event's id, so a crash between the append and the checkpoint
//! repeats the command harmlessly: it answers from the idempotency log. A
//! refused transfer-in stops the reactor on that event (state `failed`),
//! where an operator sees it; a contended one is retried.

use cqrs_es::Aggregate;
use karvon_domain::TenantId;
use karvon_domain::ids::stock_stream_id;
use karvon_domain::stock::{StockCommand, StockEvent, StockItem};
use karvon_projections::names;

use crate::StorageError;
use crate::feed::FeedEvent;
use crate::reactions::{Reaction, caused_by};
use crate::read_models::decode;
use crate::runner::Reactor;

pub struct TransferProcess;

impl Reactor for TransferProcess {
    fn name(&self) -> &'static str {
        names::TRANSFERS
    }

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[StockItem::TYPE])
    }

    fn react(&self, event: &FeedEvent) -> Result<Vec<Reaction>, StorageError> {
        if event.aggregate_type != StockItem::TYPE || event.event_type != "StockTransferredOut" {
            return Ok(Vec::new());
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
            return Err(StorageError::Corrupt(format!(
                "event {} is typed StockTransferredOut but holds another event",
                event.event_id
            )));
        };
        let tenant = TenantId::parse(event.metadata.tenant_id.clone())
            .map_err(|error| StorageError::Corrupt(format!("tenant id: {error}")))?;
        Ok(vec![Reaction::Stock {
            stream: stock_stream_id(&tenant, &to_warehouse_id, &product_id),
            metadata: caused_by(event, names::TRANSFERS, Some(transfer_id.clone())),
            command: StockCommand::TransferIn {
                warehouse_id: to_warehouse_id,
                product_id,
                from_warehouse_id: warehouse_id,
                transfer_id,
                lines: allocations,
            },
        }])
    }
}
