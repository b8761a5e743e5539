//! Sales buckets (`sales.buckets`): the pure fold
//! `karvon_projections::sales`, kept per tenant, period, period start and
//! slice (all, a branch, a cashier at a branch), in the tenant's time zone.

use cqrs_es::Aggregate;
use std::collections::HashMap;

use chrono::NaiveDate;
use karvon_domain::sale::{Sale, SaleEvent};
use karvon_projections::names;
use karvon_projections::sales::{self, BucketKey, Slice, Totals};
use rust_decimal::Decimal;

use crate::StorageError;
use crate::db::Conn;
use crate::feed::FeedEvent;

use crate::records::{self, Reader, Record, Value, record};
use crate::runner::Projection;

/// One bucket as stored. `slice` is `all`, `branch` or `cashier`; `branch`
/// and `cashier` are empty where the slice does not name them.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketRow {
    pub tenant_id: String,
    pub period: String,
    pub period_start: NaiveDate,
    pub slice: String,
    pub branch_id: String,
    pub cashier: String,
    pub total_amount: Decimal,
    pub retail_amount: Decimal,
    pub wholesale_amount: Decimal,
    pub refunds_amount: Decimal,
    pub sales_count: i64,
    pub items_sold: Decimal,
}

record! {
    BucketRow => "buckets", key(tenant_id, period, slice, branch_id, cashier, period_start),
    index buckets_range_idx(tenant_id, period, slice, period_start),
    {
        tenant_id, period, period_start, slice, branch_id, cashier, total_amount,
        retail_amount, wholesale_amount, refunds_amount, sales_count, items_sold,
    }
}

impl BucketRow {
    fn empty(tenant: &str, key: &BucketKey) -> Self {
        let (slice, branch_id, cashier) = match &key.slice {
            Slice::All => ("all", String::new(), String::new()),
            Slice::Branch(branch) => ("branch", branch.clone(), String::new()),
            Slice::Cashier { branch, cashier } => ("cashier", branch.clone(), cashier.clone()),
        };
        Self {
            tenant_id: tenant.to_string(),
            period: key.period.to_string(),
            period_start: key.period_start,
            slice: slice.to_string(),
            branch_id,
            cashier,
            total_amount: Decimal::ZERO,
            retail_amount: Decimal::ZERO,
            wholesale_amount: Decimal::ZERO,
            refunds_amount: Decimal::ZERO,
            sales_count: 0,
            items_sold: Decimal::ZERO,
        }
    }

    pub fn totals(&self) -> Totals {
        Totals {
            total_amount: self.total_amount,
            retail_amount: self.retail_amount,
            wholesale_amount: self.wholesale_amount,
            refunds_amount: self.refunds_amount,
            sales_count: self.sales_count,
            items_sold: self.items_sold,
        }
    }

    fn add(&mut self, totals: &Totals) {
        let mut sum = self.totals();
        sum.add(totals);
        self.total_amount = sum.total_amount;
        self.retail_amount = sum.retail_amount;
        self.wholesale_amount = sum.wholesale_amount;
        self.refunds_amount = sum.refunds_amount;
        self.sales_count = sum.sales_count;
        self.items_sold = sum.items_sold;
    }
}

/// One product of one sale (its lines summed), on the sale's local day:
/// what top sellers and products bought together are computed from.
#[derive(Debug, Clone, PartialEq)]
pub struct SaleProductRow {
    pub tenant_id: String,
    pub sale_id: String,
    pub product_id: String,
    pub day: NaiveDate,
    pub qty: Decimal,
    pub revenue: Decimal,
}

record! {
    SaleProductRow => "sale_products", key(tenant_id, sale_id, product_id),
    index sale_products_day_idx(tenant_id, day),
    { tenant_id, sale_id, product_id, day, qty, revenue }
}

/// The sales read model. It reads each tenant's time zone from `tenants`
/// when it first meets the tenant in a step.
#[derive(Default)]
pub struct SalesProjection;

#[async_trait::async_trait]
impl Projection for SalesProjection {
    fn name(&self) -> &'static str {
        names::SALES
    }

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[Sale::TYPE])
    }

    fn tables(&self) -> &'static [&'static str] {
        &[BucketRow::TABLE, SaleProductRow::TABLE]
    }

    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
        records::create::<BucketRow>(conn, schema).await?;
        records::create::<SaleProductRow>(conn, schema).await
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        let sale_events = super::events_of::<Sale>(events)?;
        if sale_events.is_empty() {
            return Ok(());
        }
        let mut zones: HashMap<String, chrono_tz::Tz> = HashMap::new();
        let mut changes: Vec<BucketRow> = Vec::new();
        let mut products: Vec<SaleProductRow> = Vec::new();
        // Product rows of corrected sales, removed before the new ones go in.
        let mut stale: Vec<Vec<Value>> = Vec::new();
        for (event, payload) in &sale_events {
            let tenant = &event.metadata.tenant_id;
            if !zones.contains_key(tenant) {
                zones.insert(tenant.clone(), time_zone(conn, tenant).await?);
            }
            let zone = zones[tenant];
            let (written, previous) = match payload {
                SaleEvent::SaleRecorded {
                    sale_id, details, ..
                } => (Some((sale_id, details)), None),
                SaleEvent::SaleCorrected {
                    sale_id,
                    details,
                    previous,
                    is_return: false,
                    ..
                } => (Some((sale_id, details)), Some((sale_id, previous))),
                _ => (None, None),
            };
            if let Some((sale_id, previous)) = previous {
                // A correction replaces the sale's product rows.
                products
                    .retain(|row| !(row.tenant_id == *tenant && row.sale_id == sale_id.as_str()));
                for line in &previous.lines {
                    stale.push(vec![
                        Value::Text(Some(tenant.clone())),
                        Value::Text(Some(sale_id.to_string())),
                        Value::Text(Some(line.product_id.to_string())),
                    ]);
                }
            }
            if let Some((sale_id, details)) = written {
                let day = details.occurred_at.with_timezone(&zone).date_naive();
                let mut per_product: Vec<SaleProductRow> = Vec::new();
                for line in &details.lines {
                    let product = line.product_id.to_string();
                    match per_product.iter_mut().find(|row| row.product_id == product) {
                        Some(row) => {
                            row.qty += line.qty.value();
                            row.revenue += line.amount();
                        }
                        None => per_product.push(SaleProductRow {
                            tenant_id: tenant.clone(),
                            sale_id: sale_id.to_string(),
                            product_id: product,
                            day,
                            qty: line.qty.value(),
                            revenue: line.amount(),
                        }),
                    }
                }
                products.extend(per_product);
            }
            for (key, totals) in sales::changes(payload, |at| at.with_timezone(&zone).date_naive())
            {
                let mut row = BucketRow::empty(tenant, &key);
                row.add(&totals);
                changes.push(row);
            }
        }
        let changes = changes
            .into_iter()
            .map(|change| (change.key(), change))
            .collect();
        records::fold(conn, schema, changes, |row: Option<BucketRow>, change| {
            Some(match row {
                Some(mut row) => {
                    row.add(&change.totals());
                    row
                }
                None => change,
            })
        })
        .await?;
        // A sale's product rows are written when it is recorded and
        // replaced when it is corrected.
        records::delete::<SaleProductRow>(conn, schema, stale).await?;
        records::upsert(conn, schema, &products).await
    }
}

/// The tenant's time zone (UTC when unknown or unreadable).
async fn time_zone(conn: &mut Conn<'_>, tenant: &str) -> Result<chrono_tz::Tz, StorageError> {
    let zone = records::fetch(
        conn,
        "SELECT time_zone FROM tenants WHERE tenant_id = $1",
        vec![Value::Text(Some(tenant.to_string()))],
        |row| row.text("time_zone"),
    )
    .await?;
    Ok(zone
        .first()
        .and_then(|zone| zone.parse().ok())
        .unwrap_or(chrono_tz::UTC))
}

/// Where bucket rows come from: the read model, or every bucket folded in
/// memory from the events up to an instant ([`buckets_as_of`]).
pub enum Buckets<'a> {
    Stored(&'a mut Reader),
    AsOf(&'a [BucketRow]),
}

/// The buckets of `period` from `from` to `to` (period starts, inclusive),
/// for the whole tenant or one branch, oldest first.
pub async fn buckets(
    source: &mut Buckets<'_>,
    tenant: &str,
    period: &str,
    from: NaiveDate,
    to: NaiveDate,
    branch: Option<&str>,
) -> Result<Vec<BucketRow>, StorageError> {
    let (slice, branch) = match branch {
        Some(branch) => ("branch", branch),
        None => ("all", ""),
    };
    select(source, tenant, period, slice, from, to, branch).await
}

/// The daily rows of `slice` (`branch` or `cashier`) over a range, to sum
/// per branch or cashier; `branch` narrows to one branch.
pub async fn daily(
    source: &mut Buckets<'_>,
    tenant: &str,
    slice: &str,
    from: NaiveDate,
    to: NaiveDate,
    branch: Option<&str>,
) -> Result<Vec<BucketRow>, StorageError> {
    let mut rows = select(source, tenant, "daily", slice, from, to, "").await?;
    if let Some(branch) = branch {
        rows.retain(|row| row.branch_id == branch);
    }
    Ok(rows)
}

async fn select(
    source: &mut Buckets<'_>,
    tenant: &str,
    period: &str,
    slice: &str,
    from: NaiveDate,
    to: NaiveDate,
    branch: &str,
) -> Result<Vec<BucketRow>, StorageError> {
    let reader = match source {
        Buckets::Stored(reader) => reader,
        // The same selection as the SQL below, over rows in memory.
        Buckets::AsOf(rows) => {
            let mut rows: Vec<BucketRow> = rows
                .iter()
                .filter(|row| {
                    row.tenant_id == tenant
                        && row.period == period
                        && row.slice == slice
                        && (from..=to).contains(&row.period_start)
                        && (branch.is_empty() || row.branch_id == branch)
                })
                .cloned()
                .collect();
            rows.sort_by(|a, b| {
                (a.period_start, &a.branch_id, &a.cashier).cmp(&(
                    b.period_start,
                    &b.branch_id,
                    &b.cashier,
                ))
            });
            return Ok(rows);
        }
    };
    let mut conn = reader.conn();
    let statement = format!(
        "SELECT {} FROM {}
          WHERE tenant_id = $1 AND period = $2 AND slice = $3
            AND period_start BETWEEN $4 AND $5 AND ($6 = '' OR branch_id = $6)
          ORDER BY period_start, branch_id, cashier",
        BucketRow::column_list(),
        conn.backend().table(names::SALES, BucketRow::TABLE),
    );
    let params = vec![
        Value::Text(Some(tenant.to_string())),
        Value::Text(Some(period.to_string())),
        Value::Text(Some(slice.to_string())),
        Value::Date(Some(from)),
        Value::Date(Some(to)),
        Value::Text(Some(branch.to_string())),
    ];
    records::fetch_records(&mut conn, &statement, params).await
}

/// Every bucket of `tenant` as it stood at `at`: the sale events recorded
/// up to then folded in memory, in the tenant's zone `zone` (for
/// `real-time-sales?as_of=`). It reads the tenant's feed up to `at`.
pub async fn buckets_as_of(
    db: &crate::db::Db,
    tenant: &str,
    zone: chrono_tz::Tz,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<BucketRow>, StorageError> {
    let mut buckets: HashMap<BucketKey, BucketRow> = HashMap::new();
    let mut after = karvon_projections::Position::START;
    loop {
        let events = crate::audit::tenant_feed(db, tenant, after, 5000).await?;
        let Some(last) = events.last() else {
            break;
        };
        after = last.position;
        let sales = super::events_of::<Sale>(&events)?;
        for (event, payload) in sales {
            if event.recorded_at > at {
                continue;
            }
            for (key, totals) in sales::changes(&payload, |at| at.with_timezone(&zone).date_naive())
            {
                buckets
                    .entry(key.clone())
                    .or_insert_with(|| BucketRow::empty(tenant, &key))
                    .add(&totals);
            }
        }
    }
    Ok(buckets.into_values().collect())
}

/// The products of every sale from `from` to `to` (local days).
pub async fn sale_products(
    reader: &mut Reader,
    tenant: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<SaleProductRow>, StorageError> {
    let mut conn = reader.conn();
    let statement = format!(
        "SELECT {} FROM {} WHERE tenant_id = $1 AND day BETWEEN $2 AND $3",
        SaleProductRow::column_list(),
        conn.backend().table(names::SALES, SaleProductRow::TABLE),
    );
    let params = vec![
        Value::Text(Some(tenant.to_string())),
        Value::Date(Some(from)),
        Value::Date(Some(to)),
    ];
    records::fetch_records(&mut conn, &statement, params).await
}
