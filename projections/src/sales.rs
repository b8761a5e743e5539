//! Sales buckets: pre-aggregated totals per period (daily, weekly from
//! Monday, monthly, yearly) in the tenant's time zone, for the whole
//! tenant, per branch and per branch and cashier. Sales count by sale
//! time; refunds by refund time.

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use karvon_domain::sale::{SaleDetails, SaleEvent, SaleType};
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

/// What a sale (or a return document) adds to its buckets: a sale at sale
/// time in `total_amount`, a return in `refunds_amount`.
fn contribution(details: &SaleDetails, is_return: bool) -> Totals {
    let total: Decimal = details.lines.iter().map(|line| line.amount()).sum();
    if is_return {
        return Totals {
            refunds_amount: total,
            ..Totals::default()
        };
    }
    let items: Decimal = details.lines.iter().map(|line| line.qty.value()).sum();
    let (retail, wholesale) = match details.sale_type {
        SaleType::Retail => (total, Decimal::ZERO),
        SaleType::Wholesale => (Decimal::ZERO, total),
    };
    Totals {
        total_amount: total,
        retail_amount: retail,
        wholesale_amount: wholesale,
        sales_count: 1,
        items_sold: items,
        ..Totals::default()
    }
}

impl Totals {
    fn negated(&self) -> Totals {
        Totals {
            total_amount: -self.total_amount,
            retail_amount: -self.retail_amount,
            wholesale_amount: -self.wholesale_amount,
            refunds_amount: -self.refunds_amount,
            sales_count: -self.sales_count,
            items_sold: -self.items_sold,
        }
    }
}

/// The buckets a sale event adds to (a correction: takes the previous
/// content out and puts the new in); `local_day` turns a UTC time into
/// the tenant's local date.
pub fn changes(
    event: &SaleEvent,
    local_day: impl Fn(DateTime<Utc>) -> NaiveDate,
) -> Vec<(BucketKey, Totals)> {
    let at_details = |details: &SaleDetails, totals: Totals| {
        (
            details.occurred_at,
            details.branch_id.to_string(),
            details.cashier.clone(),
            totals,
        )
    };
    let parts = match event {
        SaleEvent::SaleRecorded { details, .. } => {
            vec![at_details(details, contribution(details, false))]
        }
        SaleEvent::ReturnRecorded { details, .. } => {
            vec![at_details(details, contribution(details, true))]
        }
        SaleEvent::SaleCorrected {
            is_return,
            previous,
            details,
            ..
        } => vec![
            at_details(previous, contribution(previous, *is_return).negated()),
            at_details(details, contribution(details, *is_return)),
        ],
        SaleEvent::SaleRefunded {
            branch_id,
            cashier,
            occurred_at,
            lines,
            ..
        } => vec![(
            *occurred_at,
            branch_id.to_string(),
            cashier.clone(),
            Totals {
                refunds_amount: lines.iter().map(|line| line.amount).sum(),
                ..Totals::default()
            },
        )],
    };
    parts
        .into_iter()
        .flat_map(|(at, branch, cashier, totals)| {
            let day = local_day(at);
            let slices = [
                Slice::All,
                Slice::Branch(branch.clone()),
                Slice::Cashier { branch, cashier },
            ];
            PERIODS
                .iter()
                .flat_map(move |period| {
                    let totals = totals.clone();
                    slices.clone().into_iter().map(move |slice| {
                        (
                            BucketKey {
                                period,
                                period_start: period_start(period, day),
                                slice,
                            },
                            totals.clone(),
                        )
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// One product of one sale: (sale, product, quantity, revenue).
pub type SaleProduct<'a> = (&'a str, &'a str, Decimal, Decimal);

/// A product's sales over a period.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductSales {
    pub product_id: String,
    pub qty_sold: Decimal,
    pub revenue: Decimal,
    pub sales_count: i64,
}

/// The best sellers by quantity (ties by product id), at most `limit`.
pub fn top_sellers<'a>(
    rows: impl IntoIterator<Item = SaleProduct<'a>>,
    limit: usize,
) -> Vec<ProductSales> {
    let mut products: std::collections::BTreeMap<&str, ProductSales> = Default::default();
    for (_, product, qty, revenue) in rows {
        let entry = products.entry(product).or_insert_with(|| ProductSales {
            product_id: product.to_string(),
            qty_sold: Decimal::ZERO,
            revenue: Decimal::ZERO,
            sales_count: 0,
        });
        entry.qty_sold += qty;
        entry.revenue += revenue;
        entry.sales_count += 1;
    }
    let mut ranked: Vec<ProductSales> = products.into_values().collect();
    ranked.sort_by(|a, b| {
        b.qty_sold
            .cmp(&a.qty_sold)
            .then(a.product_id.cmp(&b.product_id))
    });
    ranked.truncate(limit);
    ranked
}

/// A product bought together with another.
#[derive(Debug, Clone, PartialEq)]
pub struct Together {
    pub product_id: String,
    /// Sales containing both.
    pub together: i64,
    /// together / all sales in the period.
    pub support: Decimal,
    /// together / sales containing the given product.
    pub confidence: Decimal,
}

/// Products most often in the same sale as `product` (ties by product id),
/// at most `limit`; ratios rounded to 4 decimals.
pub fn bought_together<'a>(
    rows: impl IntoIterator<Item = SaleProduct<'a>>,
    product: &str,
    limit: usize,
) -> Vec<Together> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut sales: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (sale, item, _, _) in rows {
        sales.entry(sale).or_default().insert(item);
    }
    let all = sales.len() as i64;
    let with: Vec<&BTreeSet<&str>> = sales
        .values()
        .filter(|items| items.contains(product))
        .collect();
    let base = with.len() as i64;
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for items in &with {
        for item in items.iter().filter(|item| **item != product) {
            *counts.entry(item).or_default() += 1;
        }
    }
    let ratio = |part: i64, whole: i64| {
        let mut ratio = if whole == 0 {
            Decimal::ZERO
        } else {
            (Decimal::from(part) / Decimal::from(whole)).round_dp(4)
        };
        ratio.rescale(4);
        ratio
    };
    let mut ranked: Vec<Together> = counts
        .into_iter()
        .map(|(item, together)| Together {
            product_id: item.to_string(),
            together,
            support: ratio(together, all),
            confidence: ratio(together, base),
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.together
            .cmp(&a.together)
            .then(a.product_id.cmp(&b.product_id))
    });
    ranked.truncate(limit);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_sellers_and_products_bought_together() {
        let d = |value: i64| Decimal::from(value);
        let rows = vec![
            ("S1", "P1", d(2), d(20)),
            ("S1", "P2", d(1), d(5)),
            ("S2", "P1", d(1), d(10)),
            ("S2", "P3", d(4), d(8)),
            ("S3", "P2", d(1), d(5)),
            ("S4", "P1", d(1), d(10)),
            ("S4", "P2", d(2), d(10)),
        ];
        let top = top_sellers(rows.clone(), 2);
        assert_eq!(
            top.iter()
                .map(|row| (row.product_id.as_str(), row.qty_sold, row.sales_count))
                .collect::<Vec<_>>(),
            [("P1", d(4), 3), ("P2", d(4), 3)]
        );
        let together = bought_together(rows, "P1", 10);
        // P1 is in S1, S2, S4 (3 of 4 sales); P2 shares S1 and S4, P3 S2.
        assert_eq!(
            together
                .iter()
                .map(|row| (
                    row.product_id.as_str(),
                    row.together,
                    row.support,
                    row.confidence
                ))
                .collect::<Vec<_>>(),
            [
                (
                    "P2",
                    2,
                    "0.5".parse().expect("d"),
                    "0.6667".parse().expect("d")
                ),
                (
                    "P3",
                    1,
                    "0.25".parse().expect("d"),
                    "0.3333".parse().expect("d")
                ),
            ]
        );
    }

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
