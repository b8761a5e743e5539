//! The `PurchaseOrder` aggregate: goods ordered from a supplier, received
//! over one or more receipts, then closed — or cancelled before anything
//! arrived.
//!
//! Identity: tenant + PO id (stream id `<tenant>/<po>`). A PO line is one
//! product; receipts name lines by product. Per line, the received quantity
//! never exceeds the ordered one unless the tenant allows over-delivery
//! (then the receipt line says so), and rejected never exceeds received.
//! Accepted goods go into stock through a reactor, keyed per receipt line.

use chrono::{DateTime, NaiveDate, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{EVENT_VERSION_1, Id, Money, Quantity};

/// The most lines a PO or a receipt may carry.
const MAX_LINES: usize = 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: Id,
    pub qty: Quantity,
    pub unit_price: Money,
}

/// What the supplier is asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderDetails {
    pub supplier_id: Id,
    pub ordered_at: DateTime<Utc>,
    pub expected_at: DateTime<Utc>,
    pub lines: Vec<OrderLine>,
}

/// One product of a receipt, as the warehouse counted it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptLine {
    pub product_id: Id,
    pub qty_received: Quantity,
    /// Of the received quantity, how much was refused (damaged, wrong).
    pub qty_rejected: Money,
    /// The price actually paid; the PO line's price when not given.
    pub unit_price: Option<Money>,
    pub batch: Option<String>,
    pub expiry_date: Option<NaiveDate>,
}

/// A receipt line as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedLine {
    /// The PO line (1-based).
    pub line: u32,
    pub product_id: Id,
    pub qty_received: Quantity,
    pub qty_rejected: Money,
    /// received − rejected: what goes into stock.
    pub accepted: Decimal,
    /// The price paid (the PO line's price when the receipt gave none).
    pub unit_price: Money,
    /// The PO line's price, for price variance.
    pub ordered_price: Money,
    pub batch: Option<String>,
    pub expiry_date: Option<NaiveDate>,
    /// True when this receipt takes the line's received total past the
    /// ordered quantity (allowed by the tenant).
    pub over_delivered: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PurchaseOrderCommand {
    Place {
        po_id: Id,
        details: OrderDetails,
    },
    Receive {
        /// Chosen by the client for a safe retry, or fresh per request.
        receipt_id: String,
        warehouse_id: Id,
        received_at: DateTime<Utc>,
        lines: Vec<ReceiptLine>,
        /// The tenant's setting: may a line receive more than was ordered?
        allow_over_delivery: bool,
    },
    Close {
        reason: Option<String>,
    },
    /// Only before any receipt.
    Cancel {
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PurchaseOrderEvent {
    PurchaseOrderPlaced {
        po_id: Id,
        #[serde(flatten)]
        details: OrderDetails,
    },
    GoodsReceived {
        po_id: Id,
        /// The PO's supplier, so stock can name it without a lookup.
        supplier_id: Id,
        receipt_id: String,
        warehouse_id: Id,
        received_at: DateTime<Utc>,
        lines: Vec<ReceivedLine>,
    },
    PurchaseOrderClosed {
        po_id: Id,
        reason: Option<String>,
    },
    PurchaseOrderCancelled {
        po_id: Id,
        reason: Option<String>,
    },
}

impl PurchaseOrderEvent {
    pub fn po_id(&self) -> &Id {
        match self {
            PurchaseOrderEvent::PurchaseOrderPlaced { po_id, .. }
            | PurchaseOrderEvent::GoodsReceived { po_id, .. }
            | PurchaseOrderEvent::PurchaseOrderClosed { po_id, .. }
            | PurchaseOrderEvent::PurchaseOrderCancelled { po_id, .. } => po_id,
        }
    }
}

impl DomainEvent for PurchaseOrderEvent {
    fn event_type(&self) -> String {
        match self {
            PurchaseOrderEvent::PurchaseOrderPlaced { .. } => "PurchaseOrderPlaced",
            PurchaseOrderEvent::GoodsReceived { .. } => "GoodsReceived",
            PurchaseOrderEvent::PurchaseOrderClosed { .. } => "PurchaseOrderClosed",
            PurchaseOrderEvent::PurchaseOrderCancelled { .. } => "PurchaseOrderCancelled",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PurchaseOrderError {
    #[error("purchase order {0} was already placed with other details")]
    AlreadyPlaced(Id),
    #[error("no such purchase order")]
    NotPlaced,
    #[error("the purchase order is closed")]
    Closed,
    #[error("the purchase order is cancelled")]
    Cancelled,
    #[error("the purchase order has receipts and can no longer be cancelled")]
    HasReceipts,
    #[error("receipt {0} was already recorded with other lines")]
    ReceiptConflict(String),
    #[error("{0} is not on the purchase order")]
    NotOnOrder(Id),
    #[error(
        "receiving {received} of {product_id} would exceed the ordered {ordered} (over-delivery is not allowed for this tenant)"
    )]
    OverDelivery {
        product_id: Id,
        ordered: Decimal,
        received: Decimal,
    },
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    #[default]
    Open,
    Closed,
    Cancelled,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PurchaseOrder {
    po_id: Option<Id>,
    details: Option<OrderDetails>,
    status: OrderStatus,
    /// Received so far, per PO line (index = line − 1).
    received: Vec<Decimal>,
    /// Every receipt so far, so a retried one is recognised.
    receipts: Vec<Receipt>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Receipt {
    receipt_id: String,
    warehouse_id: Id,
    received_at: DateTime<Utc>,
    lines: Vec<ReceivedLine>,
}

fn invalid<T>(field: &'static str, reason: &'static str) -> Result<T, PurchaseOrderError> {
    Err(PurchaseOrderError::Invalid { field, reason })
}

fn check_reason(reason: &Option<String>) -> Result<(), PurchaseOrderError> {
    match reason {
        Some(reason) if reason.chars().count() > 500 => invalid("reason", "is too long"),
        _ => Ok(()),
    }
}

impl OrderDetails {
    fn validate(&self) -> Result<(), PurchaseOrderError> {
        if self.lines.is_empty() {
            return invalid("lines", "must have at least one line");
        }
        if self.lines.len() > MAX_LINES {
            return invalid("lines", "must have at most 1000 lines");
        }
        if self.expected_at < self.ordered_at {
            return invalid("expected_at", "must not be before ordered_at");
        }
        let mut products: Vec<&Id> = self.lines.iter().map(|line| &line.product_id).collect();
        products.sort();
        if products.windows(2).any(|pair| pair[0] == pair[1]) {
            return invalid("lines", "name each product once");
        }
        let total = self.lines.iter().try_fold(Decimal::ZERO, |total, line| {
            line.qty
                .value()
                .checked_mul(line.unit_price.value())
                .and_then(|amount| total.checked_add(amount))
        });
        if total.is_none() {
            return invalid("lines", "amounts are too large");
        }
        Ok(())
    }
}

impl PurchaseOrder {
    pub fn is_placed(&self) -> bool {
        self.po_id.is_some()
    }

    fn receive(
        &self,
        received_at: DateTime<Utc>,
        lines: Vec<ReceiptLine>,
        allow_over_delivery: bool,
    ) -> Result<Vec<ReceivedLine>, PurchaseOrderError> {
        let details = self.details.as_ref().ok_or(PurchaseOrderError::NotPlaced)?;
        if lines.is_empty() {
            return invalid("lines", "must have at least one line");
        }
        if lines.len() > MAX_LINES {
            return invalid("lines", "must have at most 1000 lines");
        }
        if received_at < details.ordered_at {
            return invalid("received_at", "must not be before the order's ordered_at");
        }
        let mut seen = Vec::with_capacity(lines.len());
        let mut received = Vec::with_capacity(lines.len());
        for line in lines {
            if seen.contains(&line.product_id) {
                return invalid("lines", "name each product once");
            }
            seen.push(line.product_id.clone());
            let (index, ordered) = details
                .lines
                .iter()
                .enumerate()
                .find(|(_, ordered)| ordered.product_id == line.product_id)
                .ok_or_else(|| PurchaseOrderError::NotOnOrder(line.product_id.clone()))?;
            if line.qty_rejected.value() > line.qty_received.value() {
                return invalid("qty_rejected", "must not exceed qty_received");
            }
            if let Some(batch) = &line.batch
                && (batch.trim().is_empty() || batch.chars().count() > 64)
            {
                return invalid("batch", "must be 1 to 64 characters");
            }
            let before = self.received.get(index).copied().unwrap_or_default();
            let after = before + line.qty_received.value();
            let over_delivered = after > ordered.qty.value();
            if over_delivered && !allow_over_delivery {
                return Err(PurchaseOrderError::OverDelivery {
                    product_id: line.product_id,
                    ordered: ordered.qty.value(),
                    received: after,
                });
            }
            received.push(ReceivedLine {
                line: index as u32 + 1,
                accepted: line.qty_received.value() - line.qty_rejected.value(),
                product_id: line.product_id,
                qty_received: line.qty_received,
                qty_rejected: line.qty_rejected,
                unit_price: line.unit_price.unwrap_or(ordered.unit_price),
                ordered_price: ordered.unit_price,
                batch: line.batch,
                expiry_date: line.expiry_date,
                over_delivered,
            });
        }
        Ok(received)
    }
}

impl Aggregate for PurchaseOrder {
    const TYPE: &'static str = "PurchaseOrder";
    type Command = PurchaseOrderCommand;
    type Event = PurchaseOrderEvent;
    type Error = PurchaseOrderError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            PurchaseOrderCommand::Place { po_id, details } => {
                details.validate()?;
                if let Some(placed) = &self.details {
                    if *placed == details {
                        return Ok(());
                    }
                    return Err(PurchaseOrderError::AlreadyPlaced(po_id));
                }
                PurchaseOrderEvent::PurchaseOrderPlaced { po_id, details }
            }
            PurchaseOrderCommand::Receive {
                receipt_id,
                warehouse_id,
                received_at,
                lines,
                allow_over_delivery,
            } => {
                let (po_id, details) = self.placed()?;
                if receipt_id.is_empty() || receipt_id.len() > 64 {
                    return invalid("receipt_id", "must be 1 to 64 characters");
                }
                let earlier = self.receipts.iter().find(|r| r.receipt_id == receipt_id);
                // A retried receipt is checked against the order as it was
                // before that receipt, then compared with what was recorded.
                if let Some(recorded) = earlier {
                    let before = self.without_receipt(&receipt_id);
                    let again = before.receive(received_at, lines, allow_over_delivery);
                    let same = again.is_ok_and(|again| {
                        again == recorded.lines
                            && warehouse_id == recorded.warehouse_id
                            && received_at == recorded.received_at
                    });
                    if same {
                        return Ok(());
                    }
                    return Err(PurchaseOrderError::ReceiptConflict(receipt_id));
                }
                self.ensure_open()?;
                let lines = self.receive(received_at, lines, allow_over_delivery)?;
                PurchaseOrderEvent::GoodsReceived {
                    po_id,
                    supplier_id: details.supplier_id,
                    receipt_id,
                    warehouse_id,
                    received_at,
                    lines,
                }
            }
            PurchaseOrderCommand::Close { reason } => {
                check_reason(&reason)?;
                let (po_id, _) = self.placed()?;
                match self.status {
                    OrderStatus::Closed => return Ok(()),
                    OrderStatus::Cancelled => return Err(PurchaseOrderError::Cancelled),
                    OrderStatus::Open => PurchaseOrderEvent::PurchaseOrderClosed { po_id, reason },
                }
            }
            PurchaseOrderCommand::Cancel { reason } => {
                check_reason(&reason)?;
                let (po_id, _) = self.placed()?;
                match self.status {
                    OrderStatus::Cancelled => return Ok(()),
                    OrderStatus::Closed => return Err(PurchaseOrderError::Closed),
                    OrderStatus::Open if !self.receipts.is_empty() => {
                        return Err(PurchaseOrderError::HasReceipts);
                    }
                    OrderStatus::Open => {
                        PurchaseOrderEvent::PurchaseOrderCancelled { po_id, reason }
                    }
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            PurchaseOrderEvent::PurchaseOrderPlaced { po_id, details } => {
                self.received = vec![Decimal::ZERO; details.lines.len()];
                self.po_id = Some(po_id);
                self.details = Some(details);
            }
            PurchaseOrderEvent::GoodsReceived {
                receipt_id,
                warehouse_id,
                received_at,
                lines,
                ..
            } => self.add_receipt(Receipt {
                receipt_id,
                warehouse_id,
                received_at,
                lines,
            }),
            PurchaseOrderEvent::PurchaseOrderClosed { .. } => self.status = OrderStatus::Closed,
            PurchaseOrderEvent::PurchaseOrderCancelled { .. } => {
                self.status = OrderStatus::Cancelled;
            }
        }
    }
}

impl PurchaseOrder {
    fn placed(&self) -> Result<(Id, OrderDetails), PurchaseOrderError> {
        match (&self.po_id, &self.details) {
            (Some(po_id), Some(details)) => Ok((po_id.clone(), details.clone())),
            _ => Err(PurchaseOrderError::NotPlaced),
        }
    }

    fn ensure_open(&self) -> Result<(), PurchaseOrderError> {
        match self.status {
            OrderStatus::Open => Ok(()),
            OrderStatus::Closed => Err(PurchaseOrderError::Closed),
            OrderStatus::Cancelled => Err(PurchaseOrderError::Cancelled),
        }
    }

    /// This order as it stood without receipt `receipt_id` (and the ones
    /// after it).
    fn without_receipt(&self, receipt_id: &str) -> PurchaseOrder {
        let mut before = PurchaseOrder {
            po_id: self.po_id.clone(),
            details: self.details.clone(),
            status: OrderStatus::Open,
            received: vec![Decimal::ZERO; self.received.len()],
            receipts: Vec::new(),
        };
        for receipt in &self.receipts {
            if receipt.receipt_id == receipt_id {
                break;
            }
            before.add_receipt(receipt.clone());
        }
        before
    }

    fn add_receipt(&mut self, receipt: Receipt) {
        for line in &receipt.lines {
            if let Some(received) = self
                .received
                .get_mut((line.line as usize).saturating_sub(1))
            {
                *received += line.qty_received.value();
            }
        }
        self.receipts.push(receipt);
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    fn id(value: &str) -> Id {
        Id::parse(value).expect("id")
    }

    fn qty(value: i64) -> Quantity {
        Quantity::parse(Decimal::from(value)).expect("qty")
    }

    fn money(value: i64) -> Money {
        Money::parse(Decimal::from(value)).expect("money")
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("time")
    }

    fn details() -> OrderDetails {
        OrderDetails {
            supplier_id: id("S1"),
            ordered_at: at("2026-03-01T09:00:00Z"),
            expected_at: at("2026-03-05T18:00:00Z"),
            lines: vec![
                OrderLine {
                    product_id: id("TEA"),
                    qty: qty(100),
                    unit_price: money(10),
                },
                OrderLine {
                    product_id: id("SUGAR"),
                    qty: qty(50),
                    unit_price: money(4),
                },
            ],
        }
    }

    fn placed() -> PurchaseOrderEvent {
        PurchaseOrderEvent::PurchaseOrderPlaced {
            po_id: id("PO1"),
            details: details(),
        }
    }

    fn receipt_line(product: &str, received: i64, rejected: i64) -> ReceiptLine {
        ReceiptLine {
            product_id: id(product),
            qty_received: qty(received),
            qty_rejected: money(rejected),
            unit_price: None,
            batch: None,
            expiry_date: None,
        }
    }

    fn receive(receipt: &str, lines: Vec<ReceiptLine>, allow: bool) -> PurchaseOrderCommand {
        PurchaseOrderCommand::Receive {
            receipt_id: receipt.into(),
            warehouse_id: id("WH1"),
            received_at: at("2026-03-04T10:00:00Z"),
            lines,
            allow_over_delivery: allow,
        }
    }

    fn received_tea(receipt: &str, received: i64, rejected: i64, over: bool) -> PurchaseOrderEvent {
        PurchaseOrderEvent::GoodsReceived {
            po_id: id("PO1"),
            supplier_id: id("S1"),
            receipt_id: receipt.into(),
            warehouse_id: id("WH1"),
            received_at: at("2026-03-04T10:00:00Z"),
            lines: vec![ReceivedLine {
                line: 1,
                product_id: id("TEA"),
                qty_received: qty(received),
                qty_rejected: money(rejected),
                accepted: Decimal::from(received - rejected),
                unit_price: money(10),
                ordered_price: money(10),
                batch: None,
                expiry_date: None,
                over_delivered: over,
            }],
        }
    }

    #[test]
    fn an_order_is_placed_and_placing_it_again_changes_nothing() {
        TestFramework::<PurchaseOrder>::with(())
            .given_no_previous_events()
            .when(PurchaseOrderCommand::Place {
                po_id: id("PO1"),
                details: details(),
            })
            .then_expect_events(vec![placed()]);
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed()])
            .when(PurchaseOrderCommand::Place {
                po_id: id("PO1"),
                details: details(),
            })
            .then_expect_events(vec![]);
        let mut other = details();
        other.lines.pop();
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed()])
            .when(PurchaseOrderCommand::Place {
                po_id: id("PO1"),
                details: other,
            })
            .then_expect_error(PurchaseOrderError::AlreadyPlaced(id("PO1")));
    }

    #[test]
    fn orders_without_lines_with_a_product_twice_or_expected_before_ordered_are_refused() {
        let mut empty = details();
        empty.lines.clear();
        let mut twice = details();
        twice.lines[1].product_id = id("TEA");
        let mut backwards = details();
        backwards.expected_at = at("2026-02-01T00:00:00Z");
        for (details, field) in [
            (empty, "lines"),
            (twice, "lines"),
            (backwards, "expected_at"),
        ] {
            let error = TestFramework::<PurchaseOrder>::with(())
                .given_no_previous_events()
                .when(PurchaseOrderCommand::Place {
                    po_id: id("PO1"),
                    details,
                })
                .inspect_result()
                .expect_err("refused");
            assert!(
                matches!(error, PurchaseOrderError::Invalid { field: f, .. } if f == field),
                "{error:?}"
            );
        }
    }

    #[test]
    fn goods_are_received_in_parts_with_rejections() {
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed()])
            .when(receive("R1", vec![receipt_line("TEA", 60, 5)], false))
            .then_expect_events(vec![received_tea("R1", 60, 5, false)]);
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed(), received_tea("R1", 60, 5, false)])
            .when(receive("R2", vec![receipt_line("TEA", 40, 0)], false))
            .then_expect_events(vec![received_tea("R2", 40, 0, false)]);
    }

    #[test]
    fn over_delivery_is_refused_unless_the_tenant_allows_it() {
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed(), received_tea("R1", 60, 0, false)])
            .when(receive("R2", vec![receipt_line("TEA", 41, 0)], false))
            .then_expect_error(PurchaseOrderError::OverDelivery {
                product_id: id("TEA"),
                ordered: Decimal::from(100),
                received: Decimal::from(101),
            });
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed(), received_tea("R1", 60, 0, false)])
            .when(receive("R2", vec![receipt_line("TEA", 41, 0)], true))
            .then_expect_events(vec![received_tea("R2", 41, 0, true)]);
    }

    #[test]
    fn receipts_off_the_order_over_rejected_or_on_a_finished_order_are_refused() {
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed()])
            .when(receive("R1", vec![receipt_line("COFFEE", 1, 0)], false))
            .then_expect_error(PurchaseOrderError::NotOnOrder(id("COFFEE")));
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed()])
            .when(receive("R1", vec![receipt_line("TEA", 5, 6)], false))
            .then_expect_error(PurchaseOrderError::Invalid {
                field: "qty_rejected",
                reason: "must not exceed qty_received",
            });
        let closed = PurchaseOrderEvent::PurchaseOrderClosed {
            po_id: id("PO1"),
            reason: None,
        };
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed(), closed])
            .when(receive("R1", vec![receipt_line("TEA", 5, 0)], false))
            .then_expect_error(PurchaseOrderError::Closed);
        let cancelled = PurchaseOrderEvent::PurchaseOrderCancelled {
            po_id: id("PO1"),
            reason: None,
        };
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed(), cancelled])
            .when(receive("R1", vec![receipt_line("TEA", 5, 0)], false))
            .then_expect_error(PurchaseOrderError::Cancelled);
        TestFramework::<PurchaseOrder>::with(())
            .given_no_previous_events()
            .when(receive("R1", vec![receipt_line("TEA", 5, 0)], false))
            .then_expect_error(PurchaseOrderError::NotPlaced);
    }

    #[test]
    fn a_retried_receipt_changes_nothing_and_a_reused_receipt_id_conflicts() {
        let history = vec![placed(), received_tea("R1", 60, 5, false)];
        TestFramework::<PurchaseOrder>::with(())
            .given(history.clone())
            .when(receive("R1", vec![receipt_line("TEA", 60, 5)], false))
            .then_expect_events(vec![]);
        TestFramework::<PurchaseOrder>::with(())
            .given(history)
            .when(receive("R1", vec![receipt_line("TEA", 61, 5)], false))
            .then_expect_error(PurchaseOrderError::ReceiptConflict("R1".into()));
    }

    #[test]
    fn cancel_only_before_receipts_and_close_is_final() {
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed(), received_tea("R1", 1, 0, false)])
            .when(PurchaseOrderCommand::Cancel { reason: None })
            .then_expect_error(PurchaseOrderError::HasReceipts);
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed()])
            .when(PurchaseOrderCommand::Cancel {
                reason: Some("supplier out of stock".into()),
            })
            .then_expect_events(vec![PurchaseOrderEvent::PurchaseOrderCancelled {
                po_id: id("PO1"),
                reason: Some("supplier out of stock".into()),
            }]);
        let closed = PurchaseOrderEvent::PurchaseOrderClosed {
            po_id: id("PO1"),
            reason: None,
        };
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed(), closed.clone()])
            .when(PurchaseOrderCommand::Close { reason: None })
            .then_expect_events(vec![]);
        TestFramework::<PurchaseOrder>::with(())
            .given(vec![placed(), closed])
            .when(PurchaseOrderCommand::Cancel { reason: None })
            .then_expect_error(PurchaseOrderError::Closed);
    }
}
