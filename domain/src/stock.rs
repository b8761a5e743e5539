//! The `StockItem` aggregate: one product at one warehouse, kept per batch.
//!
//! Identity: tenant + warehouse + product (stream id
//! `<tenant>/<warehouse>/<product>`). Issues, transfers, sales and
//! downward adjustments draw the earliest-expiring batch first (FEFO); the
//! chosen batches are written into the event, so projections never have to
//! re-decide an allocation. The batch arithmetic lives in [`Lots`], shared
//! by the aggregate and the stock projection so both fold identically.

use chrono::NaiveDate;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{EVENT_VERSION_1, Id, Money, Quantity};

/// A quantity drawn from (or added to) one batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchQty {
    pub batch: Option<String>,
    pub expiry_date: Option<NaiveDate>,
    pub qty: Decimal,
}

/// One batch on hand. `batch: None` is stock received without a batch
/// label; it is also where a sale larger than the stock drives the balance
/// negative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    pub batch: Option<String>,
    pub expiry_date: Option<NaiveDate>,
    pub qty: Decimal,
}

/// The batches of one stock item, in receipt order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lots(Vec<Lot>);

impl Lots {
    pub fn new(lots: Vec<Lot>) -> Self {
        Self(lots)
    }

    pub fn as_slice(&self) -> &[Lot] {
        &self.0
    }

    pub fn on_hand(&self) -> Decimal {
        // Saturating: a stored event beyond any real quantity must not
        // panic a fold (commands cannot produce one: see `ensure_room`).
        self.0
            .iter()
            .fold(Decimal::ZERO, |sum, lot| sum.saturating_add(lot.qty))
    }

    /// The four stock conditions alerts watch, each with a message while it
    /// holds: `low_stock` (on hand at or below `reorder_level`),
    /// `negative_stock` (on hand below zero), `expired` (a batch with
    /// stock past its expiry date) and `near_expiry` (a batch with stock
    /// expiring within `near_expiry_days` of `today`, not yet expired).
    pub fn conditions(
        &self,
        reorder_level: Option<Decimal>,
        today: NaiveDate,
        near_expiry_days: u64,
    ) -> [(&'static str, Option<String>); 4] {
        let on_hand = self.on_hand();
        let near_until = today
            .checked_add_days(chrono::Days::new(near_expiry_days))
            .unwrap_or(NaiveDate::MAX);
        let batches = |expiring: &dyn Fn(NaiveDate) -> bool| -> Option<String> {
            let held: Vec<String> = self
                .0
                .iter()
                .filter(|lot| lot.qty > Decimal::ZERO)
                .filter_map(|lot| {
                    let date = lot.expiry_date.filter(|date| expiring(*date))?;
                    Some(format!(
                        "{} ({} on hand, expiry {date})",
                        lot.batch.as_deref().unwrap_or("unlabelled batch"),
                        lot.qty.normalize()
                    ))
                })
                .collect();
            (!held.is_empty()).then(|| held.join(", "))
        };
        [
            (
                "low_stock",
                reorder_level
                    .filter(|level| on_hand <= *level)
                    .map(|level| {
                        format!(
                            "on hand {} is at or below the reorder level {}",
                            on_hand.normalize(),
                            level.normalize()
                        )
                    }),
            ),
            (
                "negative_stock",
                (on_hand < Decimal::ZERO)
                    .then(|| format!("on hand is negative: {}", on_hand.normalize())),
            ),
            (
                "expired",
                batches(&|date| date < today).map(|held| format!("expired: {held}")),
            ),
            (
                "near_expiry",
                batches(&|date| date >= today && date <= near_until)
                    .map(|held| format!("expiring soon: {held}")),
            ),
        ]
    }

    /// Chooses batches for `qty` first-expiry-first-out: dated batches by
    /// expiry, then undated ones, each in receipt order. Whatever the
    /// positive batches cannot cover is taken from the unbatched lot, which
    /// then goes negative (callers that must not go negative check first).
    pub fn allocate_fefo(&self, qty: Decimal) -> Vec<BatchQty> {
        let mut order: Vec<(usize, &Lot)> = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, lot)| lot.qty > Decimal::ZERO)
            .collect();
        order.sort_by_key(|(index, lot)| (lot.expiry_date.is_none(), lot.expiry_date, *index));
        let mut remaining = qty;
        let mut taken = Vec::new();
        for (_, lot) in order {
            if remaining <= Decimal::ZERO {
                break;
            }
            let take = remaining.min(lot.qty);
            taken.push(BatchQty {
                batch: lot.batch.clone(),
                expiry_date: lot.expiry_date,
                qty: take,
            });
            remaining = remaining.saturating_sub(take);
        }
        if remaining > Decimal::ZERO {
            taken.push(BatchQty {
                batch: None,
                expiry_date: None,
                qty: remaining,
            });
        }
        taken
    }

    /// Adds stock to a batch. A negative unbatched balance (goods sold
    /// before they were booked in) is settled first.
    pub fn add(&mut self, batch: Option<String>, expiry_date: Option<NaiveDate>, qty: Decimal) {
        let mut qty = qty;
        if let Some(short) = self.0.iter_mut().find(|lot| lot.qty < Decimal::ZERO) {
            let settle = qty.min(-short.qty);
            short.qty = short.qty.saturating_add(settle);
            qty = qty.saturating_sub(settle);
        }
        if qty > Decimal::ZERO {
            match self
                .0
                .iter_mut()
                .find(|lot| lot.batch == batch && lot.expiry_date == expiry_date)
            {
                Some(lot) => lot.qty = lot.qty.saturating_add(qty),
                None => self.0.push(Lot {
                    batch,
                    expiry_date,
                    qty,
                }),
            }
        }
        self.prune();
    }

    /// Removes the given allocations (as chosen by [`Lots::allocate_fefo`]).
    pub fn remove(&mut self, allocations: &[BatchQty]) {
        for allocation in allocations {
            match self.0.iter_mut().find(|lot| {
                lot.batch == allocation.batch && lot.expiry_date == allocation.expiry_date
            }) {
                Some(lot) => lot.qty = lot.qty.saturating_sub(allocation.qty),
                None => self.0.push(Lot {
                    batch: allocation.batch.clone(),
                    expiry_date: allocation.expiry_date,
                    qty: -allocation.qty,
                }),
            }
        }
        self.prune();
    }

    /// Applies an event's effect on the batches; returns the signed change
    /// of the on-hand quantity.
    pub fn apply(&mut self, event: &StockEvent) -> Decimal {
        let before = self.on_hand();
        match event {
            StockEvent::StockReceived {
                qty,
                batch,
                expiry_date,
                ..
            } => self.add(batch.clone(), *expiry_date, qty.value()),
            StockEvent::StockIssued { allocations, .. }
            | StockEvent::StockTransferredOut { allocations, .. }
            | StockEvent::StockSold { allocations, .. } => self.remove(allocations),
            StockEvent::StockAdjusted {
                delta, allocations, ..
            } => {
                if *delta >= Decimal::ZERO {
                    self.add(None, None, *delta)
                } else {
                    self.remove(allocations)
                }
            }
            StockEvent::StockTransferredIn { lines, .. } => {
                for line in lines {
                    self.add(line.batch.clone(), line.expiry_date, line.qty);
                }
            }
            StockEvent::StockReturned {
                qty,
                batch,
                expiry_date,
                ..
            } => self.add(batch.clone(), *expiry_date, qty.value()),
        }
        self.on_hand().saturating_sub(before)
    }

    fn prune(&mut self) {
        self.0.retain(|lot| !lot.qty.is_zero());
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum StockCommand {
    Receive {
        warehouse_id: Id,
        product_id: Id,
        qty: Quantity,
        batch: Option<String>,
        expiry_date: Option<NaiveDate>,
        unit_cost: Option<Money>,
        supplier_id: Option<Id>,
        purchase_order_id: Option<Id>,
    },
    Issue {
        warehouse_id: Id,
        product_id: Id,
        qty: Quantity,
        reason: String,
    },
    Adjust {
        warehouse_id: Id,
        product_id: Id,
        counted_qty: Money,
        reason: String,
    },
    TransferOut {
        warehouse_id: Id,
        product_id: Id,
        to_warehouse_id: Id,
        qty: Quantity,
        transfer_id: String,
    },
    TransferIn {
        warehouse_id: Id,
        product_id: Id,
        from_warehouse_id: Id,
        transfer_id: String,
        lines: Vec<BatchQty>,
    },
    /// A sale that already happened: always recorded, even past zero.
    Sell {
        warehouse_id: Id,
        product_id: Id,
        qty: Quantity,
        sale_id: Id,
        line: u32,
    },
    /// Goods coming back with a refund.
    Return {
        warehouse_id: Id,
        product_id: Id,
        qty: Quantity,
        sale_id: Id,
        line: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StockEvent {
    StockReceived {
        warehouse_id: Id,
        product_id: Id,
        qty: Quantity,
        batch: Option<String>,
        expiry_date: Option<NaiveDate>,
        unit_cost: Option<Money>,
        supplier_id: Option<Id>,
        purchase_order_id: Option<Id>,
    },
    StockIssued {
        warehouse_id: Id,
        product_id: Id,
        qty: Quantity,
        reason: String,
        allocations: Vec<BatchQty>,
    },
    StockAdjusted {
        warehouse_id: Id,
        product_id: Id,
        counted_qty: Money,
        /// counted − on hand before; negative deltas come with allocations.
        delta: Decimal,
        reason: String,
        allocations: Vec<BatchQty>,
    },
    StockTransferredOut {
        warehouse_id: Id,
        product_id: Id,
        to_warehouse_id: Id,
        qty: Quantity,
        transfer_id: String,
        allocations: Vec<BatchQty>,
    },
    StockTransferredIn {
        warehouse_id: Id,
        product_id: Id,
        from_warehouse_id: Id,
        transfer_id: String,
        lines: Vec<BatchQty>,
    },
    StockSold {
        warehouse_id: Id,
        product_id: Id,
        qty: Quantity,
        sale_id: Id,
        line: u32,
        allocations: Vec<BatchQty>,
    },
    StockReturned {
        warehouse_id: Id,
        product_id: Id,
        qty: Quantity,
        sale_id: Id,
        line: u32,
        batch: Option<String>,
        expiry_date: Option<NaiveDate>,
    },
}

impl StockEvent {
    pub fn warehouse_id(&self) -> &Id {
        match self {
            StockEvent::StockReceived { warehouse_id, .. }
            | StockEvent::StockIssued { warehouse_id, .. }
            | StockEvent::StockAdjusted { warehouse_id, .. }
            | StockEvent::StockTransferredOut { warehouse_id, .. }
            | StockEvent::StockTransferredIn { warehouse_id, .. }
            | StockEvent::StockSold { warehouse_id, .. }
            | StockEvent::StockReturned { warehouse_id, .. } => warehouse_id,
        }
    }

    pub fn product_id(&self) -> &Id {
        match self {
            StockEvent::StockReceived { product_id, .. }
            | StockEvent::StockIssued { product_id, .. }
            | StockEvent::StockAdjusted { product_id, .. }
            | StockEvent::StockTransferredOut { product_id, .. }
            | StockEvent::StockTransferredIn { product_id, .. }
            | StockEvent::StockSold { product_id, .. }
            | StockEvent::StockReturned { product_id, .. } => product_id,
        }
    }
}

impl DomainEvent for StockEvent {
    fn event_type(&self) -> String {
        match self {
            StockEvent::StockReceived { .. } => "StockReceived",
            StockEvent::StockIssued { .. } => "StockIssued",
            StockEvent::StockAdjusted { .. } => "StockAdjusted",
            StockEvent::StockTransferredOut { .. } => "StockTransferredOut",
            StockEvent::StockTransferredIn { .. } => "StockTransferredIn",
            StockEvent::StockSold { .. } => "StockSold",
            StockEvent::StockReturned { .. } => "StockReturned",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StockError {
    #[error("insufficient stock: {available} on hand, {requested} requested")]
    InsufficientStock {
        available: Decimal,
        requested: Decimal,
    },
    #[error("cannot transfer to the same warehouse")]
    SameWarehouse,
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StockItem {
    lots: Lots,
}

impl StockItem {
    pub fn on_hand(&self) -> Decimal {
        self.lots.on_hand()
    }

    pub fn lots(&self) -> &Lots {
        &self.lots
    }

    /// Refuses an increase that would take the level past 10^18 (a thousand
    /// of the largest single quantity), so level arithmetic stays exact.
    fn ensure_room(&self, increase: Decimal) -> Result<(), StockError> {
        let limit = crate::values::max_amount() * Decimal::from(1000);
        match self.on_hand().checked_add(increase) {
            Some(level) if level <= limit => Ok(()),
            _ => Err(StockError::Invalid {
                field: "qty",
                reason: "would take the stock level past 10^18",
            }),
        }
    }

    fn ensure_available(&self, qty: Quantity) -> Result<(), StockError> {
        let available = self.on_hand();
        if qty.value() > available {
            return Err(StockError::InsufficientStock {
                available,
                requested: qty.value(),
            });
        }
        Ok(())
    }
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), StockError> {
    if value.chars().count() > max {
        return Err(StockError::Invalid {
            field,
            reason: "is too long",
        });
    }
    Ok(())
}

impl Aggregate for StockItem {
    const TYPE: &'static str = "StockItem";
    type Command = StockCommand;
    type Event = StockEvent;
    type Error = StockError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            StockCommand::Receive {
                warehouse_id,
                product_id,
                qty,
                batch,
                expiry_date,
                unit_cost,
                supplier_id,
                purchase_order_id,
            } => {
                if let Some(batch) = &batch {
                    if batch.trim().is_empty() {
                        return Err(StockError::Invalid {
                            field: "batch",
                            reason: "must not be empty",
                        });
                    }
                    check_text("batch", batch, 64)?;
                }
                self.ensure_room(qty.value())?;
                StockEvent::StockReceived {
                    warehouse_id,
                    product_id,
                    qty,
                    batch,
                    expiry_date,
                    unit_cost,
                    supplier_id,
                    purchase_order_id,
                }
            }
            StockCommand::Issue {
                warehouse_id,
                product_id,
                qty,
                reason,
            } => {
                check_text("reason", &reason, 500)?;
                self.ensure_available(qty)?;
                let allocations = self.lots.allocate_fefo(qty.value());
                StockEvent::StockIssued {
                    warehouse_id,
                    product_id,
                    qty,
                    reason,
                    allocations,
                }
            }
            StockCommand::Adjust {
                warehouse_id,
                product_id,
                counted_qty,
                reason,
            } => {
                check_text("reason", &reason, 500)?;
                let delta = counted_qty.value().saturating_sub(self.on_hand());
                let allocations = if delta < Decimal::ZERO {
                    self.lots.allocate_fefo(-delta)
                } else {
                    Vec::new()
                };
                StockEvent::StockAdjusted {
                    warehouse_id,
                    product_id,
                    counted_qty,
                    delta,
                    reason,
                    allocations,
                }
            }
            StockCommand::TransferOut {
                warehouse_id,
                product_id,
                to_warehouse_id,
                qty,
                transfer_id,
            } => {
                if warehouse_id == to_warehouse_id {
                    return Err(StockError::SameWarehouse);
                }
                self.ensure_available(qty)?;
                let allocations = self.lots.allocate_fefo(qty.value());
                StockEvent::StockTransferredOut {
                    warehouse_id,
                    product_id,
                    to_warehouse_id,
                    qty,
                    transfer_id,
                    allocations,
                }
            }
            StockCommand::TransferIn {
                warehouse_id,
                product_id,
                from_warehouse_id,
                transfer_id,
                lines,
            } => {
                if warehouse_id == from_warehouse_id {
                    return Err(StockError::SameWarehouse);
                }
                if lines.is_empty() || lines.iter().any(|line| line.qty <= Decimal::ZERO) {
                    return Err(StockError::Invalid {
                        field: "lines",
                        reason: "must be positive",
                    });
                }
                let total = lines
                    .iter()
                    .try_fold(Decimal::ZERO, |sum, line| sum.checked_add(line.qty))
                    .ok_or(StockError::Invalid {
                        field: "lines",
                        reason: "total is too large",
                    })?;
                self.ensure_room(total)?;
                StockEvent::StockTransferredIn {
                    warehouse_id,
                    product_id,
                    from_warehouse_id,
                    transfer_id,
                    lines,
                }
            }
            StockCommand::Sell {
                warehouse_id,
                product_id,
                qty,
                sale_id,
                line,
            } => {
                let allocations = self.lots.allocate_fefo(qty.value());
                StockEvent::StockSold {
                    warehouse_id,
                    product_id,
                    qty,
                    sale_id,
                    line,
                    allocations,
                }
            }
            StockCommand::Return {
                warehouse_id,
                product_id,
                qty,
                sale_id,
                line,
            } => {
                self.ensure_room(qty.value())?;
                StockEvent::StockReturned {
                    warehouse_id,
                    product_id,
                    qty,
                    sale_id,
                    line,
                    batch: None,
                    expiry_date: None,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.lots.apply(&event);
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type StockTest = TestFramework<StockItem>;

    fn id(value: &str) -> Id {
        Id::parse(value).expect("valid id")
    }

    fn qty(value: i64) -> Quantity {
        Quantity::parse(Decimal::from(value)).expect("positive")
    }

    fn date(value: &str) -> NaiveDate {
        value.parse().expect("date")
    }

    fn received(amount: i64, batch: Option<&str>, expiry: Option<&str>) -> StockEvent {
        StockEvent::StockReceived {
            warehouse_id: id("W1"),
            product_id: id("P1"),
            qty: qty(amount),
            batch: batch.map(str::to_string),
            expiry_date: expiry.map(date),
            unit_cost: None,
            supplier_id: None,
            purchase_order_id: None,
        }
    }

    fn allocation(batch: Option<&str>, expiry: Option<&str>, amount: i64) -> BatchQty {
        BatchQty {
            batch: batch.map(str::to_string),
            expiry_date: expiry.map(date),
            qty: Decimal::from(amount),
        }
    }

    fn issue(amount: i64) -> StockCommand {
        StockCommand::Issue {
            warehouse_id: id("W1"),
            product_id: id("P1"),
            qty: qty(amount),
            reason: "damaged".into(),
        }
    }

    #[test]
    fn receiving_records_the_batch() {
        StockTest::with(())
            .given_no_previous_events()
            .when(StockCommand::Receive {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                qty: qty(10),
                batch: Some("B1".into()),
                expiry_date: Some(date("2027-01-31")),
                unit_cost: None,
                supplier_id: None,
                purchase_order_id: None,
            })
            .then_expect_events(vec![received(10, Some("B1"), Some("2027-01-31"))]);
    }

    #[test]
    fn receiving_past_ten_to_the_eighteen_is_refused_not_a_panic() {
        let full: Vec<StockEvent> = (0..1000)
            .map(|_| received(1_000_000_000_000_000, None, None))
            .collect();
        StockTest::with(())
            .given(full)
            .when(StockCommand::Receive {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                qty: qty(1),
                batch: None,
                expiry_date: None,
                unit_cost: None,
                supplier_id: None,
                purchase_order_id: None,
            })
            .then_expect_error_message("qty: would take the stock level past 10^18");
    }

    #[test]
    fn folding_amounts_near_the_decimal_limit_saturates_instead_of_panicking() {
        let huge = BatchQty {
            batch: None,
            expiry_date: None,
            qty: Decimal::MAX,
        };
        let mut lots = Lots::default();
        let event = StockEvent::StockTransferredIn {
            warehouse_id: id("W1"),
            product_id: id("P1"),
            from_warehouse_id: id("W2"),
            transfer_id: "T".into(),
            lines: vec![huge.clone(), huge],
        };
        lots.apply(&event);
        assert_eq!(lots.on_hand(), Decimal::MAX);
    }

    #[test]
    fn receiving_with_a_blank_batch_is_refused() {
        StockTest::with(())
            .given_no_previous_events()
            .when(StockCommand::Receive {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                qty: qty(1),
                batch: Some(" ".into()),
                expiry_date: None,
                unit_cost: None,
                supplier_id: None,
                purchase_order_id: None,
            })
            .then_expect_error(StockError::Invalid {
                field: "batch",
                reason: "must not be empty",
            });
    }

    #[test]
    fn issuing_takes_the_earliest_expiring_batch_first() {
        StockTest::with(())
            .given(vec![
                received(5, Some("LATE"), Some("2027-06-01")),
                received(4, None, None),
                received(3, Some("EARLY"), Some("2027-01-01")),
            ])
            .when(issue(9))
            .then_expect_events(vec![StockEvent::StockIssued {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                qty: qty(9),
                reason: "damaged".into(),
                allocations: vec![
                    allocation(Some("EARLY"), Some("2027-01-01"), 3),
                    allocation(Some("LATE"), Some("2027-06-01"), 5),
                    allocation(None, None, 1),
                ],
            }]);
    }

    #[test]
    fn issuing_more_than_on_hand_is_refused() {
        StockTest::with(())
            .given(vec![received(5, None, None)])
            .when(issue(6))
            .then_expect_error(StockError::InsufficientStock {
                available: Decimal::from(5),
                requested: Decimal::from(6),
            });
    }

    #[test]
    fn adjusting_down_removes_by_fefo_and_up_adds_unbatched() {
        StockTest::with(())
            .given(vec![
                received(5, Some("A"), Some("2027-03-01")),
                received(5, Some("B"), Some("2027-02-01")),
            ])
            .when(StockCommand::Adjust {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                counted_qty: Money::parse(Decimal::from(7)).expect("count"),
                reason: "count".into(),
            })
            .then_expect_events(vec![StockEvent::StockAdjusted {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                counted_qty: Money::parse(Decimal::from(7)).expect("count"),
                delta: Decimal::from(-3),
                reason: "count".into(),
                allocations: vec![allocation(Some("B"), Some("2027-02-01"), 3)],
            }]);
        StockTest::with(())
            .given(vec![received(5, None, None)])
            .when(StockCommand::Adjust {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                counted_qty: Money::parse(Decimal::from(8)).expect("count"),
                reason: "count".into(),
            })
            .then_expect_events(vec![StockEvent::StockAdjusted {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                counted_qty: Money::parse(Decimal::from(8)).expect("count"),
                delta: Decimal::from(3),
                reason: "count".into(),
                allocations: vec![],
            }]);
    }

    #[test]
    fn transferring_out_carries_the_batches_and_is_refused_beyond_stock() {
        let command = |amount| StockCommand::TransferOut {
            warehouse_id: id("W1"),
            product_id: id("P1"),
            to_warehouse_id: id("W2"),
            qty: qty(amount),
            transfer_id: "T1".into(),
        };
        StockTest::with(())
            .given(vec![received(4, Some("B1"), Some("2027-01-01"))])
            .when(command(3))
            .then_expect_events(vec![StockEvent::StockTransferredOut {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                to_warehouse_id: id("W2"),
                qty: qty(3),
                transfer_id: "T1".into(),
                allocations: vec![allocation(Some("B1"), Some("2027-01-01"), 3)],
            }]);
        StockTest::with(())
            .given(vec![received(4, None, None)])
            .when(command(5))
            .then_expect_error(StockError::InsufficientStock {
                available: Decimal::from(4),
                requested: Decimal::from(5),
            });
    }

    #[test]
    fn transferring_to_the_same_warehouse_is_refused() {
        StockTest::with(())
            .given(vec![received(4, None, None)])
            .when(StockCommand::TransferOut {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                to_warehouse_id: id("W1"),
                qty: qty(1),
                transfer_id: "T1".into(),
            })
            .then_expect_error(StockError::SameWarehouse);
    }

    #[test]
    fn transferring_in_adds_the_batches() {
        let lines = vec![allocation(Some("B1"), Some("2027-01-01"), 3)];
        StockTest::with(())
            .given_no_previous_events()
            .when(StockCommand::TransferIn {
                warehouse_id: id("W2"),
                product_id: id("P1"),
                from_warehouse_id: id("W1"),
                transfer_id: "T1".into(),
                lines: lines.clone(),
            })
            .then_expect_events(vec![StockEvent::StockTransferredIn {
                warehouse_id: id("W2"),
                product_id: id("P1"),
                from_warehouse_id: id("W1"),
                transfer_id: "T1".into(),
                lines,
            }]);
    }

    #[test]
    fn transferring_in_nothing_is_refused() {
        StockTest::with(())
            .given_no_previous_events()
            .when(StockCommand::TransferIn {
                warehouse_id: id("W2"),
                product_id: id("P1"),
                from_warehouse_id: id("W1"),
                transfer_id: "T1".into(),
                lines: vec![],
            })
            .then_expect_error(StockError::Invalid {
                field: "lines",
                reason: "must be positive",
            });
    }

    #[test]
    fn a_sale_beyond_stock_is_still_recorded_and_goes_negative() {
        let sold = StockEvent::StockSold {
            warehouse_id: id("W1"),
            product_id: id("P1"),
            qty: qty(5),
            sale_id: id("S1"),
            line: 1,
            allocations: vec![
                allocation(Some("B1"), Some("2027-01-01"), 2),
                allocation(None, None, 3),
            ],
        };
        StockTest::with(())
            .given(vec![received(2, Some("B1"), Some("2027-01-01"))])
            .when(StockCommand::Sell {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                qty: qty(5),
                sale_id: id("S1"),
                line: 1,
            })
            .then_expect_events(vec![sold.clone()]);

        let mut lots = Lots::default();
        lots.apply(&received(2, Some("B1"), Some("2027-01-01")));
        assert_eq!(lots.apply(&sold), Decimal::from(-5));
        assert_eq!(lots.on_hand(), Decimal::from(-3));
        // A later receipt settles the shortfall before filling its batch.
        lots.apply(&received(10, Some("B2"), None));
        assert_eq!(lots.on_hand(), Decimal::from(7));
        assert_eq!(
            lots.as_slice(),
            &[Lot {
                batch: Some("B2".into()),
                expiry_date: None,
                qty: Decimal::from(7)
            }]
        );
    }

    #[test]
    fn a_refund_return_adds_stock_back() {
        StockTest::with(())
            .given_no_previous_events()
            .when(StockCommand::Return {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                qty: qty(2),
                sale_id: id("S1"),
                line: 1,
            })
            .then_expect_events(vec![StockEvent::StockReturned {
                warehouse_id: id("W1"),
                product_id: id("P1"),
                qty: qty(2),
                sale_id: id("S1"),
                line: 1,
                batch: None,
                expiry_date: None,
            }]);
    }

    #[test]
    fn conditions_hold_while_their_cause_does() {
        let lots = Lots::new(vec![
            Lot {
                batch: Some("B-OLD".into()),
                expiry_date: Some(date("2026-11-20")),
                qty: Decimal::from(2),
            },
            Lot {
                batch: Some("B-SOON".into()),
                expiry_date: Some(date("2026-12-10")),
                qty: Decimal::from(3),
            },
            Lot {
                batch: Some("B-LATER".into()),
                expiry_date: Some(date("2027-06-01")),
                qty: Decimal::from(5),
            },
            Lot {
                batch: Some("B-GONE".into()),
                expiry_date: Some(date("2026-11-01")),
                qty: Decimal::ZERO,
            },
        ]);
        let today = date("2026-11-26");
        let holds = |level: Option<i64>, lots: &Lots| -> Vec<(&str, bool)> {
            lots.conditions(level.map(Decimal::from), today, 30)
                .into_iter()
                .map(|(kind, message)| (kind, message.is_some()))
                .collect()
        };
        assert_eq!(
            holds(Some(10), &lots),
            [
                ("low_stock", true),
                ("negative_stock", false),
                ("expired", true),
                ("near_expiry", true)
            ]
        );
        assert_eq!(holds(Some(9), &lots)[0], ("low_stock", false));
        assert_eq!(holds(None, &lots)[0], ("low_stock", false));
        let [_, _, expired, near] = lots.conditions(None, today, 30);
        assert_eq!(
            expired.1.as_deref(),
            Some("expired: B-OLD (2 on hand, expiry 2026-11-20)"),
            "a batch with nothing left is not reported"
        );
        assert_eq!(
            near.1.as_deref(),
            Some("expiring soon: B-SOON (3 on hand, expiry 2026-12-10)")
        );
        let short = Lots::new(vec![Lot {
            batch: None,
            expiry_date: None,
            qty: Decimal::from(-4),
        }]);
        assert_eq!(
            holds(Some(0), &short),
            [
                ("low_stock", true),
                ("negative_stock", true),
                ("expired", false),
                ("near_expiry", false)
            ]
        );
    }
}
