//! Sales buckets: pre-aggregated totals per period (daily, weekly from
//! Monday, monthly, yearly) in the tenant's time zone, for the whole
//! tenant, per branch and per branch and cashier. Sales count by sale
//! time; refunds by refund time.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use karvon_domain::sale::{SaleEvent, SaleType};
use rust_decimal::Decimal;

pub const PERIODS: [&str; 4] = ["daily", "weekly", "monthly", "yearly"];

/// The first local day of the period `day` falls in.
pub fn period_start(period: &str, day: NaiveDate) -> NaiveDate {
    match period {
        "weekly" => day - Duration::days(i64::from(day.weekday().num_days_from_monday())),
        "monthly" => day.with_day(1).unwrap_or(day),
        "yearly" => NaiveDate::from_ymd_opt(day.year(), 1, 1).unwrap_or(day),
        _ => day,
    }
}

/// Which slice of the tenant a bucket covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slice {
    All,
    Branch(String),
    /// A cashier at a branch.
    Cashier {
        branch: String,
        cashier: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    pub period: &'static str,
    pub period_start: NaiveDate,
    pub slice: Slice,
}

/// What one event adds to a bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub total_amount: Decimal,
    pub retail_amount: Decimal,
    pub wholesale_amount: Decimal,
    pub refunds_amount: Decimal,
    pub sales_count: i64,
    pub items_sold: Decimal,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.total_amount += other.total_amount;
        self.retail_amount += other.retail_amount;
        self.wholesale_amount += other.wholesale_amount;
        self.refunds_amount += other.refunds_amount;
        self.sales_count += other.sales_count;
        self.items_sold += other.items_sold;
    }

    pub fn net_amount(&self) -> Decimal {
        self.total_amount - self.refunds_amount
    }
}

/// The buckets a sale event adds to; `local_day` turns a UTC time into the
/// tenant's local date.
pub fn changes(
    event: &SaleEvent,
    local_day: impl Fn(DateTime<Utc>) -> NaiveDate,
) -> Vec<(BucketKey, Totals)> {
    let (at, branch, cashier, totals) = match event {
        SaleEvent::SaleRecorded { details, .. } => {
            let total: Decimal = details.lines.iter().map(|line| line.amount()).sum();
            let items: Decimal = details.lines.iter().map(|line| line.qty.value()).sum();
            let (retail, wholesale) = match details.sale_type {
                SaleType::Retail => (total, Decimal::ZERO),
                SaleType::Wholesale => (Decimal::ZERO, total),
            };
            (
                details.occurred_at,
                details.branch_id.to_string(),
                details.cashier.clone(),
                Totals {
                    total_amount: total,
                    retail_amount: retail,
                    wholesale_amount: wholesale,
                    sales_count: 1,
                    items_sold: items,
                    ..Totals::default()
                },
            )
        }
        SaleEvent::SaleRefunded {
            branch_id,
            cashier,
            occurred_at,
            lines,
            ..
        } => (
            *occurred_at,
            branch_id.to_string(),
            cashier.clone(),
            Totals {
                refunds_amount: lines.iter().map(|line| line.amount).sum(),
                ..Totals::default()
            },
        ),
    };
    let day = local_day(at);
    let slices = [
        Slice::All,
        Slice::Branch(branch.clone()),
        Slice::Cashier { branch, cashier },
    ];
    PERIODS
        .iter()
        .flat_map(|period| {
            slices.iter().map(|slice| {
                (
                    BucketKey {
                        period,
                        period_start: period_start(period, day),
                        slice: slice.clone(),
                    },
                    totals.clone(),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday_months_and_years_on_their_first_day() {
        let day: NaiveDate = "2026-11-26".parse().expect("date"); // a Thursday
        assert_eq!(period_start("weekly", day).to_string(), "2026-11-23");
        assert_eq!(period_start("monthly", day).to_string(), "2026-11-01");
        assert_eq!(period_start("yearly", day).to_string(), "2026-01-01");
        assert_eq!(period_start("daily", day), day);
        let monday: NaiveDate = "2026-11-23".parse().expect("date");
        assert_eq!(period_start("weekly", monday), monday);
    }
}
