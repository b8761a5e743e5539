//! The goods-receipt reactor: accepted goods go into stock. Each line of a
//! `GoodsReceived` with something accepted becomes a stock receipt at the
//! receipt's warehouse, with its batch, expiry, the price paid as unit
//! cost, the supplier and the PO (movement history shows `po:<id>`); the
//! runner keys each command by (reactor, event, line), so a repeat after a
//! crash changes nothing.

use cqrs_es::Aggregate;
use karvon_domain::ids::stock_stream_id;
use karvon_domain::purchase_order::{PurchaseOrder, PurchaseOrderEvent};
use karvon_domain::stock::StockCommand;
use karvon_domain::{Quantity, TenantId};
use karvon_projections::names;

use crate::StorageError;
use crate::feed::FeedEvent;
use crate::reactions::{Reaction, caused_by};
use crate::read_models::decode;
use crate::runner::Reactor;

pub struct ReceiptsStock;

impl Reactor for ReceiptsStock {
    fn name(&self) -> &'static str {
        names::RECEIPTS_STOCK
    }

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[PurchaseOrder::TYPE])
    }

    fn react(&self, event: &FeedEvent) -> Result<Vec<Reaction>, StorageError> {
        if event.aggregate_type != PurchaseOrder::TYPE {
            return Ok(Vec::new());
        }
        let PurchaseOrderEvent::GoodsReceived {
            po_id,
            supplier_id,
            warehouse_id,
            lines,
            ..
        } = decode::<PurchaseOrderEvent>(event)?
        else {
            return Ok(Vec::new());
        };
        let tenant = TenantId::parse(event.metadata.tenant_id.clone())
            .map_err(|error| StorageError::Corrupt(format!("tenant id: {error}")))?;
        Ok(lines
            .into_iter()
            .filter_map(|line| {
                // Nothing accepted (all rejected): nothing goes into stock.
                let qty = Quantity::parse(line.accepted).ok()?;
                Some(Reaction::Stock {
                    stream: stock_stream_id(&tenant, &warehouse_id, &line.product_id),
                    command: StockCommand::Receive {
                        warehouse_id: warehouse_id.clone(),
                        product_id: line.product_id,
                        qty,
                        batch: line.batch,
                        expiry_date: line.expiry_date,
                        unit_cost: Some(line.unit_price),
                        supplier_id: Some(supplier_id.clone()),
                        purchase_order_id: Some(po_id.clone()),
                    },
                    metadata: caused_by(event, names::RECEIPTS_STOCK, None),
                })
            })
            .collect())
    }
}
