//! Stock levels (per warehouse and product, with batches) and the product
//! movement history (signed quantity and balance after each movement).

use chrono::{DateTime, Utc};
use karvon_domain::stock::{Lots, StockEvent};
use rust_decimal::Decimal;

/// The movement kinds the history endpoint reports.
pub fn movement_kind(event: &StockEvent) -> &'static str {
    match event {
        StockEvent::StockReceived { .. } => "receipt",
        StockEvent::StockIssued { .. } => "issue",
        StockEvent::StockAdjusted { .. } => "adjustment",
        StockEvent::StockTransferredOut { .. } => "transfer_out",
        StockEvent::StockTransferredIn { .. } => "transfer_in",
        StockEvent::StockSold { .. } => "sale",
        StockEvent::StockReturned { .. } => "refund",
    }
}

/// What a movement refers to: the purchase order, sale, transfer or reason.
pub fn movement_ref(event: &StockEvent) -> Option<String> {
    match event {
        StockEvent::StockReceived {
            purchase_order_id,
            batch,
            ..
        } => purchase_order_id
            .as_ref()
            .map(|po| format!("po:{po}"))
            .or_else(|| batch.as_ref().map(|batch| format!("batch:{batch}"))),
        StockEvent::StockIssued { reason, .. } | StockEvent::StockAdjusted { reason, .. } => {
            Some(reason.clone())
        }
        StockEvent::StockTransferredOut {
            to_warehouse_id,
            transfer_id,
            ..
        } => Some(format!("transfer:{transfer_id}:to:{to_warehouse_id}")),
        StockEvent::StockTransferredIn {
            from_warehouse_id,
            transfer_id,
            ..
        } => Some(format!("transfer:{transfer_id}:from:{from_warehouse_id}")),
        StockEvent::StockSold { sale_id, line, .. }
        | StockEvent::StockReturned { sale_id, line, .. } => Some(format!("sale:{sale_id}:{line}")),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Movement {
    pub at: DateTime<Utc>,
    pub kind: &'static str,
    pub qty: Decimal,
    pub balance_after: Decimal,
    pub reference: Option<String>,
}

/// Folds one stock event into the item's batches and returns the movement
/// it makes.
pub fn apply(lots: &mut Lots, event: &StockEvent, at: DateTime<Utc>) -> Movement {
    let qty = lots.apply(event);
    Movement {
        at,
        kind: movement_kind(event),
        qty,
        balance_after: lots.on_hand(),
        reference: movement_ref(event),
    }
}
