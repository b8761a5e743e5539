//! Procurement: suppliers, purchase orders with what has arrived of each
//! line, and supplier performance computed from them.
//!
//! Each purchase order row keeps its lines (with every receipt's time and
//! quantity) and the PO's figures for supplier performance, recomputed from
//! the lines on every change. A query sums the figures of the POs ordered
//! in its range ([`performance`]); only "overdue" depends on the time it is
//! asked, so it is decided then.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use karvon_domain::contact::ContactDetails;
use karvon_domain::purchase_order::PurchaseOrderEvent;
use karvon_domain::supplier::SupplierEvent;
use rust_decimal::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
pub struct SupplierRow {
    pub tenant_id: String,
    pub supplier_id: String,
    pub name: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub tax_id: Option<String>,
    pub address: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Folds a supplier event into the supplier's row.
pub fn apply_supplier(
    row: Option<SupplierRow>,
    tenant_id: &str,
    event: &SupplierEvent,
    at: DateTime<Utc>,
) -> SupplierRow {
    let ContactDetails {
        name,
        phone,
        email,
        tax_id,
        address,
    } = event.details().clone();
    SupplierRow {
        tenant_id: tenant_id.to_string(),
        supplier_id: event.supplier_id().to_string(),
        name,
        phone,
        email,
        tax_id,
        address,
        created_at: row.as_ref().map_or(at, |row| row.created_at),
        updated_at: at,
    }
}

/// One PO line and what has arrived of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineState {
    pub line: u32,
    pub product_id: String,
    pub qty: Decimal,
    pub unit_price: Decimal,
    pub received: Decimal,
    pub rejected: Decimal,
    pub accepted: Decimal,
    /// Σ accepted × price paid.
    pub received_value: Decimal,
    /// Σ (price paid − ordered price) × accepted.
    pub price_difference: Decimal,
    /// Every receipt of this line: when, and how much arrived.
    pub receipts: Vec<(DateTime<Utc>, Decimal)>,
}

impl LineState {
    /// When the received quantity reached the ordered one, counting
    /// receipts by their time (they may be recorded out of order).
    pub fn completed_at(&self) -> Option<DateTime<Utc>> {
        let mut receipts = self.receipts.clone();
        receipts.sort();
        let mut total = Decimal::ZERO;
        receipts.into_iter().find_map(|(at, qty)| {
            total += qty;
            (total >= self.qty).then_some(at)
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PurchaseOrderRow {
    pub tenant_id: String,
    pub po_id: String,
    pub supplier_id: String,
    /// `open`, `closed` or `cancelled`.
    pub status: String,
    pub ordered_at: DateTime<Utc>,
    pub expected_at: DateTime<Utc>,
    pub first_receipt_at: Option<DateTime<Utc>>,
    /// `[LineState]`.
    pub lines: serde_json::Value,
    // The PO's [`OrderFigures`], recomputed from the lines on every change
    // and kept as columns, so supplier performance reads numbers, not JSON.
    pub line_count: i64,
    pub on_time_lines: i64,
    pub in_full_lines: i64,
    pub otif_lines: i64,
    pub ordered_qty: Decimal,
    pub filled_qty: Decimal,
    pub received_qty: Decimal,
    pub rejected_qty: Decimal,
    pub received_value: Decimal,
    pub price_difference: Decimal,
    pub ordered_value_accepted: Decimal,
    pub complete: bool,
    pub updated_at: DateTime<Utc>,
}

/// What one PO adds to its supplier's performance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderFigures {
    pub line_count: i64,
    pub on_time_lines: i64,
    pub in_full_lines: i64,
    pub otif_lines: i64,
    pub ordered_qty: Decimal,
    /// Σ min(accepted, ordered).
    pub filled_qty: Decimal,
    pub received_qty: Decimal,
    pub rejected_qty: Decimal,
    pub received_value: Decimal,
    pub price_difference: Decimal,
    /// Σ ordered price × accepted.
    pub ordered_value_accepted: Decimal,
    /// Every line accepted in full.
    pub complete: bool,
}

impl OrderFigures {
    fn of(lines: &[LineState], expected_at: DateTime<Utc>) -> Self {
        let mut figures = OrderFigures {
            complete: true,
            ..OrderFigures::default()
        };
        for line in lines {
            let on_time = line.completed_at().is_some_and(|at| at <= expected_at);
            let in_full = line.accepted >= line.qty;
            figures.line_count += 1;
            figures.on_time_lines += i64::from(on_time);
            figures.in_full_lines += i64::from(in_full);
            figures.otif_lines += i64::from(on_time && in_full);
            figures.ordered_qty += line.qty;
            figures.filled_qty += line.accepted.min(line.qty);
            figures.received_qty += line.received;
            figures.rejected_qty += line.rejected;
            figures.received_value += line.received_value;
            figures.price_difference += line.price_difference;
            figures.ordered_value_accepted += line.unit_price * line.accepted;
            figures.complete &= in_full;
        }
        figures
    }
}

impl PurchaseOrderRow {
    pub fn line_states(&self) -> Vec<LineState> {
        serde_json::from_value(self.lines.clone()).unwrap_or_default()
    }

    pub fn figures(&self) -> OrderFigures {
        OrderFigures {
            line_count: self.line_count,
            on_time_lines: self.on_time_lines,
            in_full_lines: self.in_full_lines,
            otif_lines: self.otif_lines,
            ordered_qty: self.ordered_qty,
            filled_qty: self.filled_qty,
            received_qty: self.received_qty,
            rejected_qty: self.rejected_qty,
            received_value: self.received_value,
            price_difference: self.price_difference,
            ordered_value_accepted: self.ordered_value_accepted,
            complete: self.complete,
        }
    }

    fn set_lines(&mut self, lines: Vec<LineState>) {
        let OrderFigures {
            line_count,
            on_time_lines,
            in_full_lines,
            otif_lines,
            ordered_qty,
            filled_qty,
            received_qty,
            rejected_qty,
            received_value,
            price_difference,
            ordered_value_accepted,
            complete,
        } = OrderFigures::of(&lines, self.expected_at);
        *self = PurchaseOrderRow {
            lines: serde_json::to_value(lines).unwrap_or_default(),
            line_count,
            on_time_lines,
            in_full_lines,
            otif_lines,
            ordered_qty,
            filled_qty,
            received_qty,
            rejected_qty,
            received_value,
            price_difference,
            ordered_value_accepted,
            complete,
            ..self.clone()
        };
    }
}

/// Folds a purchase order event into its row (`None` before it is placed).
pub fn apply_order(
    row: Option<PurchaseOrderRow>,
    tenant_id: &str,
    event: &PurchaseOrderEvent,
    at: DateTime<Utc>,
) -> Option<PurchaseOrderRow> {
    let mut row = match (row, event) {
        (_, PurchaseOrderEvent::PurchaseOrderPlaced { po_id, details }) => {
            let lines: Vec<LineState> = details
                .lines
                .iter()
                .enumerate()
                .map(|(index, line)| LineState {
                    line: index as u32 + 1,
                    product_id: line.product_id.to_string(),
                    qty: line.qty.value(),
                    unit_price: line.unit_price.value(),
                    received: Decimal::ZERO,
                    rejected: Decimal::ZERO,
                    accepted: Decimal::ZERO,
                    received_value: Decimal::ZERO,
                    price_difference: Decimal::ZERO,
                    receipts: Vec::new(),
                })
                .collect();
            let mut row = PurchaseOrderRow {
                tenant_id: tenant_id.to_string(),
                po_id: po_id.to_string(),
                supplier_id: details.supplier_id.to_string(),
                status: "open".to_string(),
                ordered_at: details.ordered_at,
                expected_at: details.expected_at,
                first_receipt_at: None,
                lines: serde_json::Value::Null,
                line_count: 0,
                on_time_lines: 0,
                in_full_lines: 0,
                otif_lines: 0,
                ordered_qty: Decimal::ZERO,
                filled_qty: Decimal::ZERO,
                received_qty: Decimal::ZERO,
                rejected_qty: Decimal::ZERO,
                received_value: Decimal::ZERO,
                price_difference: Decimal::ZERO,
                ordered_value_accepted: Decimal::ZERO,
                complete: false,
                updated_at: at,
            };
            row.set_lines(lines);
            row
        }
        (Some(row), _) => row,
        (None, _) => return None,
    };
    match event {
        PurchaseOrderEvent::PurchaseOrderPlaced { .. } => {}
        PurchaseOrderEvent::GoodsReceived {
            received_at, lines, ..
        } => {
            let mut states = row.line_states();
            for received in lines {
                let Some(state) = states.get_mut((received.line as usize).saturating_sub(1)) else {
                    continue;
                };
                let paid = received.unit_price.value();
                state.received += received.qty_received.value();
                state.rejected += received.qty_rejected.value();
                state.accepted += received.accepted;
                state.received_value += received.accepted * paid;
                state.price_difference += (paid - state.unit_price) * received.accepted;
                state
                    .receipts
                    .push((*received_at, received.qty_received.value()));
            }
            row.first_receipt_at = Some(
                row.first_receipt_at
                    .map_or(*received_at, |first| first.min(*received_at)),
            );
            row.set_lines(states);
        }
        PurchaseOrderEvent::PurchaseOrderClosed { .. } => row.status = "closed".to_string(),
        PurchaseOrderEvent::PurchaseOrderCancelled { .. } => {
            row.status = "cancelled".to_string();
        }
    }
    row.updated_at = at;
    Some(row)
}

/// A supplier's performance over the POs of a range.
#[derive(Debug, Clone, PartialEq)]
pub struct SupplierPerformance {
    pub supplier_id: String,
    pub orders: i64,
    pub lines: i64,
    pub on_time_rate: Option<Decimal>,
    pub fill_rate: Option<Decimal>,
    pub otif_rate: Option<Decimal>,
    pub avg_lead_time_days: Option<Decimal>,
    pub lead_time_stddev_days: Option<Decimal>,
    pub rejection_rate: Option<Decimal>,
    pub price_variance: Option<Decimal>,
    pub total_received_value: Decimal,
    pub overdue_open_orders: i64,
}

/// What [`performance`] needs of one PO.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderSummary {
    pub supplier_id: String,
    pub status: String,
    pub ordered_at: DateTime<Utc>,
    pub expected_at: DateTime<Utc>,
    pub first_receipt_at: Option<DateTime<Utc>>,
    pub figures: OrderFigures,
}

/// Rates and days as the API shows them: exactly 4 decimals.
pub fn rounded(value: Decimal) -> Decimal {
    let mut rounded = value.round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(4);
    rounded
}

fn ratio(numerator: Decimal, denominator: Decimal) -> Option<Decimal> {
    numerator.checked_div(denominator).map(rounded)
}

const MILLIS_PER_DAY: i64 = 86_400_000;

/// Per supplier (in id order), the SPEC's metrics over `orders` (cancelled
/// ones are left out here); a PO is overdue when it is open, not complete
/// and was expected before `overdue_before`.
pub fn performance(
    orders: &[OrderSummary],
    overdue_before: DateTime<Utc>,
) -> Vec<SupplierPerformance> {
    let mut by_supplier: BTreeMap<&str, Vec<&OrderSummary>> = BTreeMap::new();
    for order in orders.iter().filter(|order| order.status != "cancelled") {
        by_supplier
            .entry(order.supplier_id.as_str())
            .or_default()
            .push(order);
    }
    by_supplier
        .into_iter()
        .map(|(supplier_id, orders)| {
            let mut sum = OrderFigures::default();
            let mut lead_times = Vec::new();
            let mut overdue = 0;
            for order in &orders {
                let figures = &order.figures;
                sum.line_count += figures.line_count;
                sum.on_time_lines += figures.on_time_lines;
                sum.otif_lines += figures.otif_lines;
                sum.ordered_qty += figures.ordered_qty;
                sum.filled_qty += figures.filled_qty;
                sum.received_qty += figures.received_qty;
                sum.rejected_qty += figures.rejected_qty;
                sum.received_value += figures.received_value;
                sum.price_difference += figures.price_difference;
                sum.ordered_value_accepted += figures.ordered_value_accepted;
                if let Some(first) = order.first_receipt_at {
                    let millis = (first - order.ordered_at).num_milliseconds();
                    lead_times.push(Decimal::from(millis) / Decimal::from(MILLIS_PER_DAY));
                }
                if order.status == "open" && !figures.complete && order.expected_at < overdue_before
                {
                    overdue += 1;
                }
            }
            let lines = Decimal::from(sum.line_count);
            let (average, stddev) = mean_and_stddev(&lead_times);
            SupplierPerformance {
                supplier_id: supplier_id.to_string(),
                orders: orders.len() as i64,
                lines: sum.line_count,
                on_time_rate: ratio(Decimal::from(sum.on_time_lines), lines),
                fill_rate: ratio(sum.filled_qty, sum.ordered_qty),
                otif_rate: ratio(Decimal::from(sum.otif_lines), lines),
                avg_lead_time_days: average.map(rounded),
                lead_time_stddev_days: stddev.map(rounded),
                rejection_rate: ratio(sum.rejected_qty, sum.received_qty),
                price_variance: ratio(sum.price_difference, sum.ordered_value_accepted),
                total_received_value: sum.received_value,
                overdue_open_orders: overdue,
            }
        })
        .collect()
}

/// The mean and the population standard deviation; `None` for no values.
fn mean_and_stddev(values: &[Decimal]) -> (Option<Decimal>, Option<Decimal>) {
    if values.is_empty() {
        return (None, None);
    }
    let count = Decimal::from(values.len());
    let mean = values.iter().sum::<Decimal>() / count;
    let variance = values
        .iter()
        .map(|value| (value - mean) * (value - mean))
        .sum::<Decimal>()
        / count;
    (Some(mean), variance.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> DateTime<Utc> {
        format!("{text}T00:00:00Z").parse().expect("time")
    }

    fn summary(supplier: &str, lead_days: Option<i64>, figures: OrderFigures) -> OrderSummary {
        OrderSummary {
            supplier_id: supplier.into(),
            status: "open".into(),
            ordered_at: day("2026-03-01"),
            expected_at: day("2026-03-05"),
            first_receipt_at: lead_days
                .map(|days| day("2026-03-01") + chrono::Duration::days(days)),
            figures,
        }
    }

    #[test]
    fn lead_time_mean_and_population_stddev() {
        let orders = [
            summary("S", Some(2), OrderFigures::default()),
            summary("S", Some(4), OrderFigures::default()),
            summary("S", None, OrderFigures::default()),
        ];
        let got = performance(&orders, day("2026-03-02"));
        assert_eq!(got[0].avg_lead_time_days, Some(Decimal::from(3)));
        assert_eq!(got[0].lead_time_stddev_days, Some(Decimal::ONE));
        assert_eq!(got[0].orders, 3);
        // No lines at all: the rates are undefined, not zero.
        assert_eq!(got[0].on_time_rate, None);
    }

    #[test]
    fn a_line_completed_by_receipts_recorded_out_of_order() {
        let line = LineState {
            line: 1,
            product_id: "P".into(),
            qty: Decimal::from(10),
            unit_price: Decimal::ONE,
            received: Decimal::from(10),
            rejected: Decimal::ZERO,
            accepted: Decimal::from(10),
            received_value: Decimal::from(10),
            price_difference: Decimal::ZERO,
            receipts: vec![
                (day("2026-03-09"), Decimal::from(4)),
                (day("2026-03-03"), Decimal::from(6)),
            ],
        };
        assert_eq!(line.completed_at(), Some(day("2026-03-09")));
        let figures = OrderFigures::of(&[line], day("2026-03-05"));
        assert_eq!((figures.on_time_lines, figures.in_full_lines), (0, 1));
    }
}
