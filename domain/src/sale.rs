//! The `Sale` aggregate: a sale that already happened at a branch, and its
//! refunds.
//!
//! Identity: tenant + sale id (stream id `<tenant>/<sale>`). A sale is a
//! fact reported by a till or imported: it is recorded whatever the stock
//! (stock follows it through a reactor). Refunds never return more of a
//! line than was sold and not yet refunded.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{EVENT_VERSION_1, Id, Money, Quantity};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaleType {
    Retail,
    Wholesale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentType {
    Cash,
    Card,
    Transfer,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaleLine {
    pub product_id: Id,
    pub qty: Quantity,
    pub unit_price: Money,
}

impl SaleLine {
    pub fn amount(&self) -> Decimal {
        self.qty.value() * self.unit_price.value()
    }
}

/// What a till reports about a sale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaleDetails {
    pub branch_id: Id,
    pub cashier: String,
    pub customer_id: Option<Id>,
    pub sale_type: SaleType,
    pub payment_type: PaymentType,
    /// When it happened (UTC; the edge converts the offset the till sent).
    pub occurred_at: DateTime<Utc>,
    pub lines: Vec<SaleLine>,
}

impl SaleDetails {
    fn validate(&self) -> Result<(), SaleError> {
        let invalid = |field, reason| Err(SaleError::Invalid { field, reason });
        if self.cashier.trim().is_empty() || self.cashier.chars().count() > 128 {
            return invalid("cashier", "must be 1 to 128 characters");
        }
        if self.lines.is_empty() {
            return invalid("lines", "must have at least one line");
        }
        if self.lines.len() > 1000 {
            return invalid("lines", "must have at most 1000 lines");
        }
        // Quantities and prices are each at most 10^15; their products and
        // sum must still be exact.
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

/// A refund of part of one line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundedLine {
    /// The sale line (1-based).
    pub line: u32,
    pub product_id: Id,
    pub qty: Quantity,
    /// qty × the line's unit price.
    pub amount: Decimal,
}

/// What to refund of one product.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundRequest {
    pub product_id: Id,
    pub qty: Quantity,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SaleCommand {
    Record {
        sale_id: Id,
        details: SaleDetails,
        /// Products the catalogue does not know (yet): the sale is still
        /// recorded, and says so.
        unknown_products: Vec<Id>,
    },
    /// What an external till (REGOS) reports, as often as it reports it:
    /// recorded the first time (a return as a return), nothing when the
    /// content is unchanged, corrected when it changed.
    Sync {
        sale_id: Id,
        details: SaleDetails,
        /// A return document: it counts as refunded on its own date.
        is_return: bool,
        unknown_products: Vec<Id>,
    },
    /// `lines: None` refunds everything not yet refunded.
    Refund {
        refund_id: String,
        occurred_at: DateTime<Utc>,
        reason: String,
        lines: Option<Vec<RefundRequest>>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SaleEvent {
    SaleRecorded {
        sale_id: Id,
        #[serde(flatten)]
        details: SaleDetails,
        unknown_products: Vec<Id>,
    },
    /// A return reported by a till on its own (not against a recorded
    /// sale): refunded on its own date, its goods back at its branch.
    ReturnRecorded {
        sale_id: Id,
        #[serde(flatten)]
        details: SaleDetails,
        unknown_products: Vec<Id>,
    },
    /// The till changed a sale (or return) it had reported: `previous` is
    /// undone, `details` counts instead.
    SaleCorrected {
        sale_id: Id,
        is_return: bool,
        previous: SaleDetails,
        details: SaleDetails,
        unknown_products: Vec<Id>,
    },
    SaleRefunded {
        sale_id: Id,
        /// The sale's branch, where the goods go back to.
        branch_id: Id,
        /// The sale's cashier, for refunds by cashier.
        cashier: String,
        refund_id: String,
        occurred_at: DateTime<Utc>,
        reason: String,
        lines: Vec<RefundedLine>,
    },
}

impl SaleEvent {
    pub fn sale_id(&self) -> &Id {
        match self {
            SaleEvent::SaleRecorded { sale_id, .. }
            | SaleEvent::ReturnRecorded { sale_id, .. }
            | SaleEvent::SaleCorrected { sale_id, .. }
            | SaleEvent::SaleRefunded { sale_id, .. } => sale_id,
        }
    }
}

impl DomainEvent for SaleEvent {
    fn event_type(&self) -> String {
        match self {
            SaleEvent::SaleRecorded { .. } => "SaleRecorded",
            SaleEvent::ReturnRecorded { .. } => "ReturnRecorded",
            SaleEvent::SaleCorrected { .. } => "SaleCorrected",
            SaleEvent::SaleRefunded { .. } => "SaleRefunded",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SaleError {
    #[error("sale {0} was already recorded with other details")]
    AlreadyRecorded(Id),
    #[error("no such sale")]
    NotRecorded,
    #[error("nothing is left to refund")]
    NothingToRefund,
    #[error("sale {0} has refunds; it can no longer be corrected")]
    RefundedSaleChanged(Id),
    #[error("sale {0} was recorded as a {1}; it cannot become the other")]
    KindChanged(Id, &'static str),
    #[error("cannot refund {requested} of {product_id}: {left} sold and not yet refunded")]
    RefundTooLarge {
        product_id: Id,
        requested: Decimal,
        left: Decimal,
    },
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sale {
    sale_id: Option<Id>,
    details: Option<SaleDetails>,
    unknown_products: Vec<Id>,
    /// Refunded so far, per sale line (index = line − 1).
    refunded: Vec<Decimal>,
    refund_ids: Vec<String>,
    /// A return document (reported by a till), not a sale.
    #[serde(default)]
    is_return: bool,
}

impl Sale {
    pub fn is_recorded(&self) -> bool {
        self.details.is_some()
    }

    /// Quantity of each line not yet refunded, with the line.
    fn refundable(&self) -> Vec<(u32, &SaleLine, Decimal)> {
        let Some(details) = &self.details else {
            return Vec::new();
        };
        details
            .lines
            .iter()
            .enumerate()
            .map(|(index, line)| {
                let refunded = self.refunded.get(index).copied().unwrap_or_default();
                (index as u32 + 1, line, line.qty.value() - refunded)
            })
            .collect()
    }

    /// Chooses which lines a refund takes from: per product, its lines in
    /// order, each up to what is left of it.
    fn plan_refund(
        &self,
        requests: Option<Vec<RefundRequest>>,
    ) -> Result<Vec<RefundedLine>, SaleError> {
        let refundable = self.refundable();
        let line_refund = |line: u32, sale_line: &SaleLine, qty: Decimal| {
            Quantity::parse(qty).map(|qty| RefundedLine {
                line,
                product_id: sale_line.product_id.clone(),
                qty,
                amount: qty.value() * sale_line.unit_price.value(),
            })
        };
        let mut planned = Vec::new();
        match requests {
            None => {
                for (line, sale_line, left) in &refundable {
                    if *left > Decimal::ZERO {
                        planned.extend(line_refund(*line, sale_line, *left).ok());
                    }
                }
            }
            Some(requests) => {
                let mut left: Vec<Decimal> = refundable.iter().map(|(_, _, left)| *left).collect();
                for request in requests {
                    let available: Decimal = refundable
                        .iter()
                        .zip(&left)
                        .filter(|((_, line, _), _)| line.product_id == request.product_id)
                        .map(|(_, left)| *left)
                        .sum();
                    if request.qty.value() > available {
                        return Err(SaleError::RefundTooLarge {
                            product_id: request.product_id,
                            requested: request.qty.value(),
                            left: available,
                        });
                    }
                    let mut wanted = request.qty.value();
                    for ((line, sale_line, _), left) in refundable.iter().zip(left.iter_mut()) {
                        if wanted <= Decimal::ZERO {
                            break;
                        }
                        if sale_line.product_id != request.product_id || *left <= Decimal::ZERO {
                            continue;
                        }
                        let take = wanted.min(*left);
                        *left -= take;
                        wanted -= take;
                        planned.extend(line_refund(*line, sale_line, take).ok());
                    }
                }
            }
        }
        if planned.is_empty() {
            return Err(SaleError::NothingToRefund);
        }
        Ok(planned)
    }
}

impl Aggregate for Sale {
    const TYPE: &'static str = "Sale";
    type Command = SaleCommand;
    type Event = SaleEvent;
    type Error = SaleError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            SaleCommand::Record {
                sale_id,
                details,
                unknown_products,
            } => {
                details.validate()?;
                if let Some(existing) = &self.details {
                    // The same sale reported again is not an error.
                    if *existing == details {
                        return Ok(());
                    }
                    return Err(SaleError::AlreadyRecorded(sale_id));
                }
                sink.write(
                    SaleEvent::SaleRecorded {
                        sale_id,
                        details,
                        unknown_products,
                    },
                    self,
                )
                .await;
            }
            SaleCommand::Sync {
                sale_id,
                details,
                is_return,
                unknown_products,
            } => {
                details.validate()?;
                let event = match &self.details {
                    None if is_return => SaleEvent::ReturnRecorded {
                        sale_id,
                        details,
                        unknown_products,
                    },
                    None => SaleEvent::SaleRecorded {
                        sale_id,
                        details,
                        unknown_products,
                    },
                    Some(_) if self.is_return != is_return => {
                        let was = if self.is_return { "return" } else { "sale" };
                        return Err(SaleError::KindChanged(sale_id, was));
                    }
                    Some(existing) if *existing == details => return Ok(()),
                    Some(_) if !self.refund_ids.is_empty() => {
                        return Err(SaleError::RefundedSaleChanged(sale_id));
                    }
                    Some(existing) => SaleEvent::SaleCorrected {
                        sale_id,
                        is_return,
                        previous: existing.clone(),
                        details,
                        unknown_products,
                    },
                };
                sink.write(event, self).await;
            }
            SaleCommand::Refund {
                refund_id,
                occurred_at,
                reason,
                lines,
            } => {
                if self.is_return {
                    return Err(SaleError::NothingToRefund);
                }
                let sale_id = self.sale_id.clone().ok_or(SaleError::NotRecorded)?;
                let (branch_id, cashier) = self
                    .details
                    .as_ref()
                    .map(|details| (details.branch_id.clone(), details.cashier.clone()))
                    .ok_or(SaleError::NotRecorded)?;
                if reason.chars().count() > 500 {
                    return Err(SaleError::Invalid {
                        field: "reason",
                        reason: "must be at most 500 characters",
                    });
                }
                if self.refund_ids.contains(&refund_id) {
                    return Ok(());
                }
                let lines = self.plan_refund(lines)?;
                sink.write(
                    SaleEvent::SaleRefunded {
                        sale_id,
                        branch_id,
                        cashier,
                        refund_id,
                        occurred_at,
                        reason,
                        lines,
                    },
                    self,
                )
                .await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SaleEvent::SaleRecorded {
                sale_id,
                details,
                unknown_products,
            } => {
                self.refunded = vec![Decimal::ZERO; details.lines.len()];
                self.sale_id = Some(sale_id);
                self.details = Some(details);
                self.unknown_products = unknown_products;
            }
            SaleEvent::ReturnRecorded {
                sale_id,
                details,
                unknown_products,
            } => {
                self.sale_id = Some(sale_id);
                self.details = Some(details);
                self.unknown_products = unknown_products;
                self.is_return = true;
            }
            SaleEvent::SaleCorrected {
                details,
                unknown_products,
                ..
            } => {
                self.refunded = vec![Decimal::ZERO; details.lines.len()];
                self.details = Some(details);
                self.unknown_products = unknown_products;
            }
            SaleEvent::SaleRefunded {
                refund_id, lines, ..
            } => {
                for line in lines {
                    if let Some(refunded) = self.refunded.get_mut(line.line as usize - 1) {
                        *refunded = refunded.saturating_add(line.qty.value());
                    }
                }
                self.refund_ids.push(refund_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type SaleTest = TestFramework<Sale>;

    fn id(value: &str) -> Id {
        Id::parse(value).expect("id")
    }

    fn line(product: &str, qty: i64, price: i64) -> SaleLine {
        SaleLine {
            product_id: id(product),
            qty: Quantity::parse(Decimal::from(qty)).expect("qty"),
            unit_price: Money::parse(Decimal::from(price)).expect("price"),
        }
    }

    fn details(lines: Vec<SaleLine>) -> SaleDetails {
        SaleDetails {
            branch_id: id("B1"),
            cashier: "dilnoza".into(),
            customer_id: None,
            sale_type: SaleType::Retail,
            payment_type: PaymentType::Cash,
            occurred_at: "2026-11-25T18:30:00Z".parse().expect("time"),
            lines,
        }
    }

    fn recorded(lines: Vec<SaleLine>) -> SaleEvent {
        SaleEvent::SaleRecorded {
            sale_id: id("S1"),
            details: details(lines),
            unknown_products: Vec::new(),
        }
    }

    fn refund(lines: Option<Vec<(&str, i64)>>) -> SaleCommand {
        SaleCommand::Refund {
            refund_id: "R1".into(),
            occurred_at: "2026-11-26T09:00:00Z".parse().expect("time"),
            reason: "broken".into(),
            lines: lines.map(|lines| {
                lines
                    .into_iter()
                    .map(|(product, qty)| RefundRequest {
                        product_id: id(product),
                        qty: Quantity::parse(Decimal::from(qty)).expect("qty"),
                    })
                    .collect()
            }),
        }
    }

    #[test]
    fn a_sale_is_recorded_once_and_a_repeat_is_harmless() {
        let lines = vec![line("P1", 2, 1500)];
        SaleTest::with(())
            .given_no_previous_events()
            .when(SaleCommand::Record {
                sale_id: id("S1"),
                details: details(lines.clone()),
                unknown_products: Vec::new(),
            })
            .then_expect_events(vec![recorded(lines.clone())]);
        SaleTest::with(())
            .given(vec![recorded(lines.clone())])
            .when(SaleCommand::Record {
                sale_id: id("S1"),
                details: details(lines),
                unknown_products: Vec::new(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_same_sale_id_with_other_details_is_refused() {
        SaleTest::with(())
            .given(vec![recorded(vec![line("P1", 2, 1500)])])
            .when(SaleCommand::Record {
                sale_id: id("S1"),
                details: details(vec![line("P1", 3, 1500)]),
                unknown_products: Vec::new(),
            })
            .then_expect_error(SaleError::AlreadyRecorded(id("S1")));
    }

    #[test]
    fn a_sale_without_lines_is_refused() {
        SaleTest::with(())
            .given_no_previous_events()
            .when(SaleCommand::Record {
                sale_id: id("S1"),
                details: details(vec![]),
                unknown_products: Vec::new(),
            })
            .then_expect_error_message("lines: must have at least one line");
    }

    #[test]
    fn a_refund_takes_from_the_products_lines_in_order() {
        SaleTest::with(())
            .given(vec![recorded(vec![
                line("P1", 2, 1000),
                line("P2", 1, 500),
                line("P1", 3, 900),
            ])])
            .when(refund(Some(vec![("P1", 4)])))
            .then_expect_events(vec![SaleEvent::SaleRefunded {
                sale_id: id("S1"),
                branch_id: id("B1"),
                cashier: "dilnoza".into(),
                refund_id: "R1".into(),
                occurred_at: "2026-11-26T09:00:00Z".parse().expect("time"),
                reason: "broken".into(),
                lines: vec![
                    RefundedLine {
                        line: 1,
                        product_id: id("P1"),
                        qty: Quantity::parse(Decimal::from(2)).expect("qty"),
                        amount: Decimal::from(2000),
                    },
                    RefundedLine {
                        line: 3,
                        product_id: id("P1"),
                        qty: Quantity::parse(Decimal::from(2)).expect("qty"),
                        amount: Decimal::from(1800),
                    },
                ],
            }]);
    }

    #[test]
    fn a_refund_never_exceeds_what_is_left() {
        let first = SaleEvent::SaleRefunded {
            sale_id: id("S1"),
            branch_id: id("B1"),
            cashier: "dilnoza".into(),
            refund_id: "R0".into(),
            occurred_at: "2026-11-26T08:00:00Z".parse().expect("time"),
            reason: "x".into(),
            lines: vec![RefundedLine {
                line: 1,
                product_id: id("P1"),
                qty: Quantity::parse(Decimal::from(2)).expect("qty"),
                amount: Decimal::from(2000),
            }],
        };
        SaleTest::with(())
            .given(vec![recorded(vec![line("P1", 3, 1000)]), first.clone()])
            .when(refund(Some(vec![("P1", 2)])))
            .then_expect_error(SaleError::RefundTooLarge {
                product_id: id("P1"),
                requested: Decimal::from(2),
                left: Decimal::from(1),
            });
        SaleTest::with(())
            .given(vec![recorded(vec![line("P1", 2, 1000)]), first])
            .when(refund(None))
            .then_expect_error(SaleError::NothingToRefund);
    }

    #[test]
    fn a_refund_of_an_unknown_sale_is_refused() {
        SaleTest::with(())
            .given_no_previous_events()
            .when(refund(None))
            .then_expect_error(SaleError::NotRecorded);
    }

    fn sync(lines: Vec<SaleLine>, is_return: bool) -> SaleCommand {
        SaleCommand::Sync {
            sale_id: id("S1"),
            details: details(lines),
            is_return,
            unknown_products: Vec::new(),
        }
    }

    #[test]
    fn a_synced_sale_is_recorded_once_and_corrected_when_it_changed() {
        SaleTest::with(())
            .given_no_previous_events()
            .when(sync(vec![line("P1", 2, 100)], false))
            .then_expect_events(vec![recorded(vec![line("P1", 2, 100)])]);
        SaleTest::with(())
            .given(vec![recorded(vec![line("P1", 2, 100)])])
            .when(sync(vec![line("P1", 2, 100)], false))
            .then_expect_events(vec![]);
        SaleTest::with(())
            .given(vec![recorded(vec![line("P1", 2, 100)])])
            .when(sync(vec![line("P1", 3, 100)], false))
            .then_expect_events(vec![SaleEvent::SaleCorrected {
                sale_id: id("S1"),
                is_return: false,
                previous: details(vec![line("P1", 2, 100)]),
                details: details(vec![line("P1", 3, 100)]),
                unknown_products: Vec::new(),
            }]);
    }

    #[test]
    fn a_synced_return_is_its_own_document_and_cannot_be_refunded_or_become_a_sale() {
        let returned = SaleEvent::ReturnRecorded {
            sale_id: id("S1"),
            details: details(vec![line("P1", 1, 100)]),
            unknown_products: Vec::new(),
        };
        SaleTest::with(())
            .given_no_previous_events()
            .when(sync(vec![line("P1", 1, 100)], true))
            .then_expect_events(vec![returned.clone()]);
        SaleTest::with(())
            .given(vec![returned.clone()])
            .when(refund(None))
            .then_expect_error(SaleError::NothingToRefund);
        SaleTest::with(())
            .given(vec![returned])
            .when(sync(vec![line("P1", 1, 100)], false))
            .then_expect_error(SaleError::KindChanged(id("S1"), "return"));
    }
}
