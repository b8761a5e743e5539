//! Stock levels (`stock.levels`, one row per warehouse and product with its
//! batches) and the movement history (`stock.movements`).

use cqrs_es::Aggregate;
use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use karvon_domain::stock::{Lot, Lots, StockEvent, StockItem};
use karvon_projections::{Position, names, stock};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::StorageError;
use crate::db::{Conn, Portable};
use crate::feed::FeedEvent;

use crate::records::{self, Reader, Record, Value, record};
use crate::runner::Projection;

/// The stock read model. It keeps the levels it has written in memory so a
/// step need not read them back: only this runner writes these tables
/// while it holds the projection's lock, and the runner resets the cache
/// whenever the stored checkpoint is not the one it last committed.
#[derive(Default)]
pub struct StockProjection {
    cache: std::sync::Mutex<Levels>,
}

type Key = (String, String, String);
type Levels = HashMap<Key, (Lots, DateTime<Utc>)>;

/// Levels kept in memory at most; beyond it the cache starts over.
const CACHE_LIMIT: usize = 200_000;

impl StockProjection {
    fn take_cache(&self) -> Levels {
        self.cache
            .lock()
            .map(|mut cache| std::mem::take(&mut *cache))
            .unwrap_or_default()
    }

    fn keep_cache(&self, levels: Levels) {
        if let Ok(mut cache) = self.cache.lock() {
            *cache = if levels.len() > CACHE_LIMIT {
                Levels::new()
            } else {
                levels
            };
        }
    }
}

/// A stock level as stored: one row per warehouse and product, its
/// batches as JSON.
pub struct LevelRow {
    pub tenant_id: String,
    pub warehouse_id: String,
    pub product_id: String,
    pub on_hand: Decimal,
    pub batches: serde_json::Value,
    pub updated_at: DateTime<Utc>,
}

record! {
    LevelRow => "levels", key(tenant_id, warehouse_id, product_id),
    index levels_product_idx(tenant_id, product_id),
    { tenant_id, warehouse_id, product_id, on_hand, batches, updated_at }
}

/// One movement of the history, keyed by its event's feed position.
pub struct MovementRow {
    pub tenant_id: String,
    pub product_id: String,
    pub warehouse_id: String,
    pub transaction_id: i64,
    pub global_position: i64,
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
    pub kind: String,
    pub qty: Decimal,
    pub balance_after: Decimal,
    pub reference: Option<String>,
}

record! {
    MovementRow => "movements", key(tenant_id, product_id, transaction_id, global_position),
    {
        tenant_id, product_id, warehouse_id, transaction_id, global_position, event_id, at,
        kind, qty, balance_after, reference as "ref",
    }
}

#[async_trait::async_trait]
impl Projection for StockProjection {
    fn name(&self) -> &'static str {
        names::STOCK
    }

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[StockItem::TYPE])
    }

    fn reset(&self) {
        drop(self.take_cache());
    }

    fn tables(&self) -> &'static [&'static str] {
        &[LevelRow::TABLE, MovementRow::TABLE]
    }

    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
        records::create::<LevelRow>(conn, schema).await?;
        records::create::<MovementRow>(conn, schema).await
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        let stock_events = super::events_of::<StockItem>(events)?;
        if stock_events.is_empty() {
            return Ok(());
        }
        let keys: Vec<Key> = stock_events
            .iter()
            .map(|(event, payload)| {
                (
                    event.metadata.tenant_id.clone(),
                    payload.warehouse_id().to_string(),
                    payload.product_id().to_string(),
                )
            })
            .collect();
        // Taken out for the step; dropped (= reset) if the step fails.
        let mut levels = self.take_cache();
        let mut missing: Vec<&Key> = keys
            .iter()
            .filter(|key| !levels.contains_key(*key))
            .collect();
        missing.sort();
        missing.dedup();
        let missing = missing
            .into_iter()
            .map(|(tenant, warehouse, product)| {
                vec![
                    Value::Text(Some(tenant.clone())),
                    Value::Text(Some(warehouse.clone())),
                    Value::Text(Some(product.clone())),
                ]
            })
            .collect();
        for row in records::load::<LevelRow>(conn, schema, missing).await? {
            let key = (row.tenant_id, row.warehouse_id, row.product_id);
            levels.insert(key, (lots(row.batches)?, row.updated_at));
        }
        let mut touched = Vec::new();
        let mut movements = Vec::with_capacity(stock_events.len());
        for ((event, payload), key) in stock_events.iter().zip(&keys) {
            let level = levels
                .entry(key.clone())
                .or_insert_with(|| (Lots::default(), event.recorded_at));
            let movement = stock::apply(&mut level.0, payload, event.metadata.occurred_at);
            level.1 = event.recorded_at;
            movements.push(MovementRow {
                tenant_id: key.0.clone(),
                product_id: key.2.clone(),
                warehouse_id: key.1.clone(),
                transaction_id: event.position.transaction_id as i64,
                global_position: event.position.global_position,
                event_id: event.event_id,
                at: movement.at,
                kind: movement.kind.to_string(),
                qty: movement.qty,
                balance_after: movement.balance_after,
                reference: movement.reference,
            });
            touched.push(key);
        }
        touched.sort();
        touched.dedup();
        let rows = touched
            .into_iter()
            .filter_map(|key| levels.get(key).map(|level| (key, level)))
            .map(|((tenant, warehouse, product), (lots, at))| {
                Ok(LevelRow {
                    tenant_id: tenant.clone(),
                    warehouse_id: warehouse.clone(),
                    product_id: product.clone(),
                    on_hand: lots.on_hand(),
                    batches: serde_json::to_value(lots.as_slice())
                        .map_err(|error| StorageError::Corrupt(error.to_string()))?,
                    updated_at: *at,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        records::upsert(conn, schema, &rows).await?;
        records::insert(conn, schema, &movements).await?;
        self.keep_cache(levels);
        Ok(())
    }
}

fn lots(batches: serde_json::Value) -> Result<Lots, StorageError> {
    let lots: Vec<Lot> = serde_json::from_value(batches)
        .map_err(|error| StorageError::Corrupt(format!("stock batches: {error}")))?;
    Ok(Lots::new(lots))
}

/// One row of `GET /api/integrations/inventory-levels`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct InventoryLevel {
    pub product_id: String,
    pub sku: Option<String>,
    pub name: Option<String>,
    pub category: Option<String>,
    pub warehouse_id: String,
    pub on_hand: Decimal,
    pub reorder_level: Option<Decimal>,
    pub low_stock: bool,
    pub batches: Vec<BatchView>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct BatchView {
    pub batch: Option<String>,
    pub qty: Decimal,
    pub expiry_date: Option<NaiveDate>,
    pub expired: bool,
    pub near_expiry: bool,
}

#[derive(Debug, Clone, Default)]
pub struct InventoryFilter {
    pub category: Option<String>,
    pub warehouse_id: Option<String>,
    pub product_id: Option<String>,
    pub low_stock: bool,
    pub expired: bool,
    pub near_expiry: bool,
    pub near_expiry_days: i64,
    /// The tenant's today (local date): expiry is judged against it.
    pub today: NaiveDate,
    /// Exclusive (warehouse_id, product_id) to continue after.
    pub after: Option<(String, String)>,
    pub limit: i64,
}

pub async fn inventory_levels(
    reader: &mut Reader,
    tenant: &str,
    filter: &InventoryFilter,
) -> Result<Vec<InventoryLevel>, StorageError> {
    let near_until = filter.today + Duration::days(filter.near_expiry_days);
    let (after_warehouse, after_product) = filter.after.clone().unzip();
    let mut conn = reader.conn();
    let backend = conn.backend();
    let text = |param| backend.text_param(param);
    let batches = backend.json_elements("l.batches", "b");
    let (qty, expiry) = (
        backend.json_number("b", "qty"),
        backend.json_date("b", "expiry_date"),
    );
    let statement = format!(
        "SELECT l.product_id, p.sku, p.name, p.category, l.warehouse_id, l.on_hand, p.reorder_level,
                l.batches, l.updated_at
           FROM {levels} l
           LEFT JOIN {products} p ON p.tenant_id = l.tenant_id AND p.product_id = l.product_id
          WHERE l.tenant_id = $1
            AND ({p2} IS NULL OR p.category = $2)
            AND ({p3} IS NULL OR l.warehouse_id = $3)
            AND ({p4} IS NULL OR l.product_id = $4)
            AND (NOT $5 OR (p.reorder_level IS NOT NULL AND {on_hand} <= {reorder_level}))
            AND (NOT $6 OR EXISTS (SELECT 1 FROM {batches} WHERE {qty} > 0 AND {expiry} < $8))
            AND (NOT $7 OR EXISTS (SELECT 1 FROM {batches}
                                    WHERE {qty} > 0 AND {expiry} BETWEEN $8 AND $9))
            AND ({p10} IS NULL OR (l.warehouse_id, l.product_id) > ($10, $11))
          ORDER BY l.warehouse_id, l.product_id
          LIMIT $12",
        levels = backend.table(names::STOCK, LevelRow::TABLE),
        products = backend.table(names::CATALOG, "products"),
        p2 = text("$2"),
        p3 = text("$3"),
        p4 = text("$4"),
        p10 = text("$10"),
        on_hand = backend.numeric("l.on_hand"),
        reorder_level = backend.numeric("p.reorder_level"),
    );
    let params = vec![
        Value::Text(Some(tenant.to_string())),
        Value::Text(filter.category.clone()),
        Value::Text(filter.warehouse_id.clone()),
        Value::Text(filter.product_id.clone()),
        Value::Bool(Some(filter.low_stock)),
        Value::Bool(Some(filter.expired)),
        Value::Bool(Some(filter.near_expiry)),
        Value::Date(Some(filter.today)),
        Value::Date(Some(near_until)),
        Value::Text(after_warehouse),
        Value::Text(after_product),
        Value::BigInt(Some(filter.limit)),
    ];
    records::fetch(&mut conn, &statement, params, |row| {
        inventory_level(row, filter.today, near_until)
    })
    .await
}

/// `inventory-levels?as_of=`: the levels as they stood at `at`, folded
/// from the tenant's product and stock events recorded up to then (not
/// from today's tables), filtered and paged as [`inventory_levels`] does.
/// It reads the tenant's feed up to `at`: an audit tool, not a hot path.
pub async fn inventory_levels_as_of(
    db: &crate::db::Db,
    tenant: &str,
    at: DateTime<Utc>,
    filter: &InventoryFilter,
) -> Result<Vec<InventoryLevel>, StorageError> {
    use karvon_domain::product::ProductEvent;
    use karvon_projections::catalog::{self, ProductRow};
    let mut products: HashMap<String, ProductRow> = HashMap::new();
    let mut levels: std::collections::BTreeMap<(String, String), (Lots, DateTime<Utc>)> =
        std::collections::BTreeMap::new();
    let mut after = karvon_projections::Position::START;
    loop {
        let events = crate::audit::tenant_feed(db, tenant, after, 5000).await?;
        let Some(last) = events.last() else {
            break;
        };
        after = last.position;
        for event in &events {
            if event.recorded_at > at {
                continue;
            }
            match event.aggregate_type.as_str() {
                "Product" => {
                    let payload: ProductEvent = super::decode(event)?;
                    let id = match &payload {
                        ProductEvent::ProductRegistered { product_id, .. }
                        | ProductEvent::ProductUpdated { product_id, .. }
                        | ProductEvent::ProductDiscontinued { product_id, .. } => {
                            product_id.to_string()
                        }
                    };
                    let row = products.remove(&id);
                    let at = event.metadata.occurred_at;
                    if let Some(row) = catalog::apply(row, tenant, &payload, at) {
                        products.insert(id, row);
                    }
                }
                "StockItem" => {
                    let payload: StockEvent = super::decode(event)?;
                    let key = (
                        payload.warehouse_id().to_string(),
                        payload.product_id().to_string(),
                    );
                    let entry = levels
                        .entry(key)
                        .or_insert_with(|| (Lots::default(), event.recorded_at));
                    entry.0.apply(&payload);
                    entry.1 = event.recorded_at;
                }
                _ => {}
            }
        }
    }
    let near_until = filter.today + Duration::days(filter.near_expiry_days);
    let mut answer = Vec::new();
    for ((warehouse_id, product_id), (lots, updated_at)) in levels {
        let product = products.get(&product_id);
        let on_hand = lots.on_hand();
        let reorder_level = product.and_then(|product| product.reorder_level);
        let level = InventoryLevel {
            sku: product.map(|product| product.sku.clone()),
            name: product.map(|product| product.name.clone()),
            category: product.map(|product| product.category.clone()),
            low_stock: reorder_level.is_some_and(|level| on_hand <= level),
            batches: batch_views(&lots, filter.today, near_until),
            product_id,
            warehouse_id,
            on_hand,
            reorder_level,
            updated_at,
        };
        if filter.admits(&level, near_until) {
            answer.push(level);
            if answer.len() as i64 >= filter.limit {
                break;
            }
        }
    }
    Ok(answer)
}

impl InventoryFilter {
    /// The SQL filter of [`inventory_levels`], for levels computed in
    /// memory.
    fn admits(&self, level: &InventoryLevel, near_until: NaiveDate) -> bool {
        let held = |check: &dyn Fn(NaiveDate) -> bool| {
            level
                .batches
                .iter()
                .any(|batch| batch.qty > Decimal::ZERO && batch.expiry_date.is_some_and(check))
        };
        self.category
            .as_ref()
            .is_none_or(|category| level.category.as_ref() == Some(category))
            && self
                .warehouse_id
                .as_ref()
                .is_none_or(|warehouse| *warehouse == level.warehouse_id)
            && self
                .product_id
                .as_ref()
                .is_none_or(|product| *product == level.product_id)
            && (!self.low_stock || level.low_stock)
            && (!self.expired || held(&|date| date < self.today))
            && (!self.near_expiry || held(&|date| date >= self.today && date <= near_until))
            && self.after.as_ref().is_none_or(|(warehouse, product)| {
                (&level.warehouse_id, &level.product_id) > (warehouse, product)
            })
    }
}

fn batch_views(lots: &Lots, today: NaiveDate, near_until: NaiveDate) -> Vec<BatchView> {
    lots.as_slice()
        .iter()
        .cloned()
        .map(|lot| BatchView {
            expired: lot.expiry_date.is_some_and(|date| date < today),
            near_expiry: lot
                .expiry_date
                .is_some_and(|date| date >= today && date <= near_until),
            batch: lot.batch,
            qty: lot.qty,
            expiry_date: lot.expiry_date,
        })
        .collect()
}

fn inventory_level(
    row: &dyn Portable,
    today: NaiveDate,
    near_until: NaiveDate,
) -> Result<InventoryLevel, StorageError> {
    let on_hand = row.decimal("on_hand")?;
    let reorder_level = row.opt_decimal("reorder_level")?;
    Ok(InventoryLevel {
        product_id: row.text("product_id")?,
        sku: row.opt_text("sku")?,
        name: row.opt_text("name")?,
        category: row.opt_text("category")?,
        warehouse_id: row.text("warehouse_id")?,
        on_hand,
        reorder_level,
        low_stock: reorder_level.is_some_and(|level| on_hand <= level),
        batches: batch_views(&lots(row.json("batches")?)?, today, near_until),
        updated_at: row.time("updated_at")?,
    })
}

/// One row of `GET /api/integrations/product-movement-history`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct MovementView {
    pub at: DateTime<Utc>,
    pub kind: String,
    pub warehouse_id: String,
    pub qty: Decimal,
    pub balance_after: Decimal,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub event_id: Uuid,
    /// Feed position of the event, usable as a paging cursor.
    pub position: String,
}

pub async fn movement_history(
    reader: &mut Reader,
    tenant: &str,
    product_id: &str,
    warehouse_id: Option<&str>,
    after: Option<Position>,
    limit: i64,
) -> Result<Vec<MovementView>, StorageError> {
    let after = after.unwrap_or(Position::START);
    let mut conn = reader.conn();
    let backend = conn.backend();
    let statement = format!(
        "SELECT at, kind, warehouse_id, qty, balance_after, ref, event_id, transaction_id, global_position
           FROM {}
          WHERE tenant_id = $1 AND product_id = $2
            AND ({} IS NULL OR warehouse_id = $3)
            AND (transaction_id, global_position) > ($4, $5)
          ORDER BY transaction_id, global_position
          LIMIT $6",
        backend.table(names::STOCK, MovementRow::TABLE),
        backend.text_param("$3"),
    );
    let params = vec![
        Value::Text(Some(tenant.to_string())),
        Value::Text(Some(product_id.to_string())),
        Value::Text(warehouse_id.map(str::to_string)),
        Value::BigInt(Some(after.transaction_id as i64)),
        Value::BigInt(Some(after.global_position)),
        Value::BigInt(Some(limit)),
    ];
    records::fetch(&mut conn, &statement, params, movement_view).await
}

fn movement_view(row: &dyn Portable) -> Result<MovementView, StorageError> {
    let transaction = row.int("transaction_id")?;
    Ok(MovementView {
        at: row.time("at")?,
        kind: row.text("kind")?,
        warehouse_id: row.text("warehouse_id")?,
        qty: row.decimal("qty")?,
        balance_after: row.decimal("balance_after")?,
        reference: row.opt_text("ref")?,
        event_id: row.uuid("event_id")?,
        position: Position::new(transaction as u64, row.int("global_position")?).to_string(),
    })
}
