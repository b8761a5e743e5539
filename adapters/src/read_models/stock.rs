//! Stock levels (`stock.levels`, one row per warehouse and product with its
//! batches) and the movement history (`stock.movements`).

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use karvon_domain::stock::{Lot, Lots, StockItem};
use karvon_projections::{Position, names, stock};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::StorageError;
use crate::feed::FeedEvent;
use crate::runner::FeedHandler;

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

#[async_trait::async_trait]
impl FeedHandler for StockProjection {
    fn name(&self) -> &'static str {
        names::STOCK
    }

    fn schema(&self) -> Option<&'static str> {
        Some("stock")
    }

    fn reset(&self) {
        drop(self.take_cache());
    }

    async fn create_tables(
        &self,
        conn: &mut PgConnection,
        schema: &str,
    ) -> Result<(), StorageError> {
        for statement in [
            format!(
                "CREATE TABLE IF NOT EXISTS {schema}.levels (
                     tenant_id    text        NOT NULL,
                     warehouse_id text        NOT NULL,
                     product_id   text        NOT NULL,
                     on_hand      numeric     NOT NULL,
                     batches      jsonb       NOT NULL,
                     updated_at   timestamptz NOT NULL,
                     PRIMARY KEY (tenant_id, warehouse_id, product_id)
                 )"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS levels_product_idx ON {schema}.levels (tenant_id, product_id)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {schema}.movements (
                     tenant_id       text        NOT NULL,
                     product_id      text        NOT NULL,
                     warehouse_id    text        NOT NULL,
                     transaction_id  bigint      NOT NULL,
                     global_position bigint      NOT NULL,
                     event_id        uuid        NOT NULL,
                     at              timestamptz NOT NULL,
                     kind            text        NOT NULL,
                     qty             numeric     NOT NULL,
                     balance_after   numeric     NOT NULL,
                     ref             text,
                     PRIMARY KEY (tenant_id, product_id, transaction_id, global_position)
                 )"
            ),
        ] {
            sqlx::query(&statement).execute(&mut *conn).await?;
        }
        super::secure_tables(conn, schema, &["levels", "movements"]).await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
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
        let mut missing: Vec<Key> = keys
            .iter()
            .filter(|key| !levels.contains_key(*key))
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            levels.extend(load_levels(conn, &missing).await?);
        }
        let mut touched = Vec::new();
        let mut movements = Movements::default();
        for ((event, payload), key) in stock_events.iter().zip(&keys) {
            let level = levels
                .entry(key.clone())
                .or_insert_with(|| (Lots::default(), event.recorded_at));
            let movement = stock::apply(&mut level.0, payload, event.metadata.occurred_at);
            level.1 = event.recorded_at;
            movements.push(key, event, movement);
            touched.push(key);
        }
        touched.sort();
        touched.dedup();
        save_levels(
            conn,
            touched.iter().filter_map(|key| levels.get_key_value(*key)),
        )
        .await?;
        movements.insert(conn).await?;
        self.keep_cache(levels);
        Ok(())
    }
}

async fn load_levels(conn: &mut PgConnection, keys: &[Key]) -> Result<Levels, StorageError> {
    let mut tenants = Vec::with_capacity(keys.len());
    let mut warehouses = Vec::with_capacity(keys.len());
    let mut products = Vec::with_capacity(keys.len());
    for (tenant, warehouse, product) in keys {
        tenants.push(tenant.as_str());
        warehouses.push(warehouse.as_str());
        products.push(product.as_str());
    }
    let rows = sqlx::query(
        "SELECT tenant_id, warehouse_id, product_id, batches, updated_at FROM levels
          WHERE (tenant_id, warehouse_id, product_id) IN
                (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]))",
    )
    .bind(&tenants)
    .bind(&warehouses)
    .bind(&products)
    .fetch_all(conn)
    .await?;
    let mut levels = HashMap::with_capacity(rows.len());
    for row in rows {
        let batches: serde_json::Value = row.try_get("batches")?;
        let lots: Vec<Lot> = serde_json::from_value(batches)
            .map_err(|error| StorageError::Corrupt(format!("stock batches: {error}")))?;
        levels.insert(
            (
                row.try_get("tenant_id")?,
                row.try_get("warehouse_id")?,
                row.try_get("product_id")?,
            ),
            (Lots::new(lots), row.try_get("updated_at")?),
        );
    }
    Ok(levels)
}

async fn save_levels<'a>(
    conn: &mut PgConnection,
    levels: impl Iterator<Item = (&'a Key, &'a (Lots, DateTime<Utc>))>,
) -> Result<(), StorageError> {
    let mut tenants = Vec::new();
    let mut warehouses = Vec::new();
    let mut products = Vec::new();
    let mut on_hand = Vec::new();
    let mut batches = Vec::new();
    let mut updated = Vec::new();
    for ((tenant, warehouse, product), (lots, at)) in levels {
        tenants.push(tenant.as_str());
        warehouses.push(warehouse.as_str());
        products.push(product.as_str());
        on_hand.push(lots.on_hand());
        batches.push(
            serde_json::to_value(lots.as_slice())
                .map_err(|error| StorageError::Corrupt(error.to_string()))?,
        );
        updated.push(*at);
    }
    sqlx::query(
        "INSERT INTO levels (tenant_id, warehouse_id, product_id, on_hand, batches, updated_at)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::numeric[], $5::jsonb[], $6::timestamptz[])
         ON CONFLICT (tenant_id, warehouse_id, product_id) DO UPDATE SET
             on_hand = EXCLUDED.on_hand, batches = EXCLUDED.batches, updated_at = EXCLUDED.updated_at",
    )
    .bind(tenants)
    .bind(warehouses)
    .bind(products)
    .bind(on_hand)
    .bind(batches)
    .bind(updated)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Default)]
struct Movements {
    tenant: Vec<String>,
    product: Vec<String>,
    warehouse: Vec<String>,
    transaction: Vec<i64>,
    position: Vec<i64>,
    event_id: Vec<Uuid>,
    at: Vec<DateTime<Utc>>,
    kind: Vec<&'static str>,
    qty: Vec<Decimal>,
    balance_after: Vec<Decimal>,
    reference: Vec<Option<String>>,
}

impl Movements {
    fn push(&mut self, key: &Key, event: &FeedEvent, movement: stock::Movement) {
        self.tenant.push(key.0.clone());
        self.warehouse.push(key.1.clone());
        self.product.push(key.2.clone());
        self.transaction.push(event.position.transaction_id as i64);
        self.position.push(event.position.global_position);
        self.event_id.push(event.event_id);
        self.at.push(movement.at);
        self.kind.push(movement.kind);
        self.qty.push(movement.qty);
        self.balance_after.push(movement.balance_after);
        self.reference.push(movement.reference);
    }

    async fn insert(self, conn: &mut PgConnection) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO movements (tenant_id, product_id, warehouse_id, transaction_id, global_position,
                                   event_id, at, kind, qty, balance_after, ref)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::uuid[],
                                  $7::timestamptz[], $8::text[], $9::numeric[], $10::numeric[], $11::text[])",
        )
        .bind(self.tenant)
        .bind(self.product)
        .bind(self.warehouse)
        .bind(self.transaction)
        .bind(self.position)
        .bind(self.event_id)
        .bind(self.at)
        .bind(self.kind)
        .bind(self.qty)
        .bind(self.balance_after)
        .bind(self.reference)
        .execute(conn)
        .await?;
        Ok(())
    }
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
    conn: &mut PgConnection,
    tenant: &str,
    filter: &InventoryFilter,
) -> Result<Vec<InventoryLevel>, StorageError> {
    let near_until = filter.today + Duration::days(filter.near_expiry_days);
    let (after_warehouse, after_product) = filter.after.clone().unzip();
    let rows = sqlx::query(
        "SELECT l.product_id, p.sku, p.name, p.category, l.warehouse_id, l.on_hand, p.reorder_level,
                l.batches, l.updated_at
           FROM stock.levels l
           LEFT JOIN catalog.products p ON p.tenant_id = l.tenant_id AND p.product_id = l.product_id
          WHERE l.tenant_id = $1
            AND ($2::text IS NULL OR p.category = $2)
            AND ($3::text IS NULL OR l.warehouse_id = $3)
            AND ($4::text IS NULL OR l.product_id = $4)
            AND (NOT $5 OR (p.reorder_level IS NOT NULL AND l.on_hand <= p.reorder_level))
            AND (NOT $6 OR EXISTS (SELECT 1 FROM jsonb_array_elements(l.batches) b
                                    WHERE (b->>'qty')::numeric > 0 AND (b->>'expiry_date')::date < $8))
            AND (NOT $7 OR EXISTS (SELECT 1 FROM jsonb_array_elements(l.batches) b
                                    WHERE (b->>'qty')::numeric > 0
                                      AND (b->>'expiry_date')::date BETWEEN $8 AND $9))
            AND ($10::text IS NULL OR (l.warehouse_id, l.product_id) > ($10, $11))
          ORDER BY l.warehouse_id, l.product_id
          LIMIT $12",
    )
    .bind(tenant)
    .bind(&filter.category)
    .bind(&filter.warehouse_id)
    .bind(&filter.product_id)
    .bind(filter.low_stock)
    .bind(filter.expired)
    .bind(filter.near_expiry)
    .bind(filter.today)
    .bind(near_until)
    .bind(after_warehouse)
    .bind(after_product)
    .bind(filter.limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let batches: serde_json::Value = row.try_get("batches")?;
            let lots: Vec<Lot> = serde_json::from_value(batches)
                .map_err(|error| StorageError::Corrupt(format!("stock batches: {error}")))?;
            let on_hand: Decimal = row.try_get("on_hand")?;
            let reorder_level: Option<Decimal> = row.try_get("reorder_level")?;
            Ok(InventoryLevel {
                product_id: row.try_get("product_id")?,
                sku: row.try_get("sku")?,
                name: row.try_get("name")?,
                category: row.try_get("category")?,
                warehouse_id: row.try_get("warehouse_id")?,
                on_hand,
                reorder_level,
                low_stock: reorder_level.is_some_and(|level| on_hand <= level),
                batches: lots
                    .into_iter()
                    .map(|lot| BatchView {
                        expired: lot.expiry_date.is_some_and(|date| date < filter.today),
                        near_expiry: lot
                            .expiry_date
                            .is_some_and(|date| date >= filter.today && date <= near_until),
                        batch: lot.batch,
                        qty: lot.qty,
                        expiry_date: lot.expiry_date,
                    })
                    .collect(),
                updated_at: row.try_get("updated_at")?,
            })
        })
        .collect()
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
    conn: &mut PgConnection,
    tenant: &str,
    product_id: &str,
    warehouse_id: Option<&str>,
    after: Option<Position>,
    limit: i64,
) -> Result<Vec<MovementView>, StorageError> {
    let after = after.unwrap_or(Position::START);
    let rows = sqlx::query(
        "SELECT at, kind, warehouse_id, qty, balance_after, ref, event_id, transaction_id, global_position
           FROM stock.movements
          WHERE tenant_id = $1 AND product_id = $2
            AND ($3::text IS NULL OR warehouse_id = $3)
            AND (transaction_id, global_position) > ($4, $5)
          ORDER BY transaction_id, global_position
          LIMIT $6",
    )
    .bind(tenant)
    .bind(product_id)
    .bind(warehouse_id)
    .bind(after.transaction_id as i64)
    .bind(after.global_position)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let transaction: i64 = row.try_get("transaction_id")?;
            Ok(MovementView {
                at: row.try_get("at")?,
                kind: row.try_get("kind")?,
                warehouse_id: row.try_get("warehouse_id")?,
                qty: row.try_get("qty")?,
                balance_after: row.try_get("balance_after")?,
                reference: row.try_get("ref")?,
                event_id: row.try_get("event_id")?,
                position: Position::new(transaction as u64, row.try_get("global_position")?)
                    .to_string(),
            })
        })
        .collect()
}
