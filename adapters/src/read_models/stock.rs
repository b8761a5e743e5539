//! Stock levels (`stock.levels`, one row per warehouse and product with its
//! batches) and the movement history (`stock.movements`).

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use karvon_domain::stock::{Lot, Lots, StockItem};
use karvon_projections::{Position, names, stock};
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use crate::StorageError;
use crate::db::{Backend, Conn, Portable, json_list, on_conn, sqlite_time};
use crate::feed::FeedEvent;
use crate::read_models::Reader;
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

#[async_trait::async_trait]
impl Projection for StockProjection {
    fn name(&self) -> &'static str {
        names::STOCK
    }

    fn reset(&self) {
        drop(self.take_cache());
    }

    fn tables(&self) -> &'static [&'static str] {
        &["levels", "movements"]
    }

    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
        let backend = conn.backend();
        let levels = backend.table(schema, "levels");
        let movements = backend.table(schema, "movements");
        let index = backend.index(schema, "levels_product_idx");
        // Same columns on both backends; SQLite keeps decimals as text.
        let (decimal, json, time, uuid) = match backend {
            Backend::Postgres => ("numeric", "jsonb", "timestamptz", "uuid"),
            Backend::Sqlite => ("text", "text", "text", "text"),
        };
        for statement in [
            format!(
                "CREATE TABLE IF NOT EXISTS {levels} (
                     tenant_id    text      NOT NULL,
                     warehouse_id text      NOT NULL,
                     product_id   text      NOT NULL,
                     on_hand      {decimal} NOT NULL,
                     batches      {json}    NOT NULL,
                     updated_at   {time}    NOT NULL,
                     PRIMARY KEY (tenant_id, warehouse_id, product_id)
                 )"
            ),
            format!("CREATE INDEX IF NOT EXISTS {index} ON {levels} (tenant_id, product_id)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {movements} (
                     tenant_id       text      NOT NULL,
                     product_id      text      NOT NULL,
                     warehouse_id    text      NOT NULL,
                     transaction_id  bigint    NOT NULL,
                     global_position bigint    NOT NULL,
                     event_id        {uuid}    NOT NULL,
                     at              {time}    NOT NULL,
                     kind            text      NOT NULL,
                     qty             {decimal} NOT NULL,
                     balance_after   {decimal} NOT NULL,
                     ref             text,
                     PRIMARY KEY (tenant_id, product_id, transaction_id, global_position)
                 )"
            ),
        ] {
            conn.execute(&statement).await?;
        }
        super::secure_tables(conn, schema, &["levels", "movements"]).await?;
        Ok(())
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
        let mut missing: Vec<Key> = keys
            .iter()
            .filter(|key| !levels.contains_key(*key))
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        let backend = conn.backend();
        let (levels_table, movements_table) = (
            backend.table(schema, "levels"),
            backend.table(schema, "movements"),
        );
        if !missing.is_empty() {
            levels.extend(load_levels(conn, &levels_table, &missing).await?);
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
            &levels_table,
            touched.iter().filter_map(|key| levels.get_key_value(*key)),
        )
        .await?;
        movements.insert(conn, &movements_table).await?;
        self.keep_cache(levels);
        Ok(())
    }
}

async fn load_levels(
    conn: &mut Conn<'_>,
    table: &str,
    keys: &[Key],
) -> Result<Levels, StorageError> {
    let mut tenants = Vec::with_capacity(keys.len());
    let mut warehouses = Vec::with_capacity(keys.len());
    let mut products = Vec::with_capacity(keys.len());
    for (tenant, warehouse, product) in keys {
        tenants.push(tenant.clone());
        warehouses.push(warehouse.clone());
        products.push(product.clone());
    }
    let rows = match conn {
        Conn::Postgres(conn) => sqlx::query(&format!(
            "SELECT tenant_id, warehouse_id, product_id, batches, updated_at FROM {table}
              WHERE (tenant_id, warehouse_id, product_id) IN
                    (SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[]))"
        ))
        .bind(&tenants)
        .bind(&warehouses)
        .bind(&products)
        .fetch_all(&mut **conn)
        .await?
        .iter()
        .map(level_from_row)
        .collect::<Result<Vec<_>, _>>()?,
        Conn::Sqlite(conn) => sqlx::query(&format!(
            "SELECT tenant_id, warehouse_id, product_id, batches, updated_at FROM {table}
              WHERE (tenant_id, warehouse_id, product_id) IN
                    (SELECT t.value, w.value, p.value
                       FROM json_each($1) t JOIN json_each($2) w ON w.key = t.key
                                            JOIN json_each($3) p ON p.key = t.key)"
        ))
        .bind(json_list(&tenants))
        .bind(json_list(&warehouses))
        .bind(json_list(&products))
        .fetch_all(&mut **conn)
        .await?
        .iter()
        .map(level_from_row)
        .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(rows.into_iter().collect())
}

fn level_from_row(row: &impl Portable) -> Result<(Key, (Lots, DateTime<Utc>)), StorageError> {
    Ok((
        (
            row.text("tenant_id")?,
            row.text("warehouse_id")?,
            row.text("product_id")?,
        ),
        (lots(row.json("batches")?)?, row.time("updated_at")?),
    ))
}

fn lots(batches: serde_json::Value) -> Result<Lots, StorageError> {
    let lots: Vec<Lot> = serde_json::from_value(batches)
        .map_err(|error| StorageError::Corrupt(format!("stock batches: {error}")))?;
    Ok(Lots::new(lots))
}

const LEVEL_CONFLICT: &str = "ON CONFLICT (tenant_id, warehouse_id, product_id) DO UPDATE SET
             on_hand = excluded.on_hand, batches = excluded.batches, updated_at = excluded.updated_at";

async fn save_levels<'a>(
    conn: &mut Conn<'_>,
    table: &str,
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
    match conn {
        Conn::Postgres(conn) => {
            sqlx::query(&format!(
                "INSERT INTO {table} (tenant_id, warehouse_id, product_id, on_hand, batches, updated_at)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::numeric[], $5::jsonb[], $6::timestamptz[])
                 {LEVEL_CONFLICT}"
            ))
            .bind(tenants)
            .bind(warehouses)
            .bind(products)
            .bind(on_hand)
            .bind(batches)
            .bind(updated)
            .execute(&mut **conn)
            .await?;
        }
        Conn::Sqlite(conn) => {
            // One statement for the batch: the rows travel as one JSON
            // array (SQLite has no arrays; a statement per row costs a
            // hop to sqlx's connection thread each).
            let rows: Vec<serde_json::Value> = (0..tenants.len())
                .map(|i| {
                    serde_json::json!([
                        tenants[i],
                        warehouses[i],
                        products[i],
                        on_hand[i].to_string(),
                        batches[i].to_string(),
                        sqlite_time(&updated[i]),
                    ])
                })
                .collect();
            sqlx::query(&format!(
                "INSERT INTO {table} (tenant_id, warehouse_id, product_id, on_hand, batches, updated_at)
                 SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5
                   FROM json_each($1) WHERE true
                 {LEVEL_CONFLICT}"
            ))
            .bind(serde_json::Value::from(rows).to_string())
            .execute(&mut **conn)
            .await?;
        }
    }
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

    async fn insert(self, conn: &mut Conn<'_>, table: &str) -> Result<(), StorageError> {
        const COLUMNS: &str =
            "tenant_id, product_id, warehouse_id, transaction_id, global_position,
                               event_id, at, kind, qty, balance_after, ref";
        match conn {
            Conn::Postgres(conn) => {
                sqlx::query(&format!(
                    "INSERT INTO {table} ({COLUMNS})
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::uuid[],
                                          $7::timestamptz[], $8::text[], $9::numeric[], $10::numeric[], $11::text[])"
                ))
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
                .execute(&mut **conn)
                .await?;
            }
            Conn::Sqlite(conn) => {
                let rows: Vec<serde_json::Value> = (0..self.tenant.len())
                    .map(|i| {
                        serde_json::json!([
                            self.tenant[i],
                            self.product[i],
                            self.warehouse[i],
                            self.transaction[i],
                            self.position[i],
                            self.event_id[i].to_string(),
                            sqlite_time(&self.at[i]),
                            self.kind[i],
                            self.qty[i].to_string(),
                            self.balance_after[i].to_string(),
                            self.reference[i],
                        ])
                    })
                    .collect();
                sqlx::query(&format!(
                    "INSERT INTO {table} ({COLUMNS})
                     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4,
                            value ->> 5, value ->> 6, value ->> 7, value ->> 8, value ->> 9,
                            value ->> 10
                       FROM json_each($1)"
                ))
                .bind(serde_json::Value::from(rows).to_string())
                .execute(&mut **conn)
                .await?;
            }
        }
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
    reader: &mut Reader,
    tenant: &str,
    filter: &InventoryFilter,
) -> Result<Vec<InventoryLevel>, StorageError> {
    let near_until = filter.today + Duration::days(filter.near_expiry_days);
    let (after_warehouse, after_product) = filter.after.clone().unzip();
    // One query; what differs is how each backend reads a batch out of the
    // JSON array, compares decimals (SQLite keeps them as text) and types
    // its parameters.
    let (levels, products, text, batches, qty, expiry, low) = match reader.conn().backend() {
        Backend::Postgres => (
            "stock.levels",
            "catalog.products",
            "::text",
            "jsonb_array_elements(l.batches) b",
            "(b->>'qty')::numeric",
            "(b->>'expiry_date')::date",
            "l.on_hand <= p.reorder_level",
        ),
        Backend::Sqlite => (
            "stock_levels",
            "catalog_products",
            "",
            "json_each(l.batches) b",
            "CAST(json_extract(b.value, '$.qty') AS REAL)",
            "json_extract(b.value, '$.expiry_date')",
            "CAST(l.on_hand AS REAL) <= CAST(p.reorder_level AS REAL)",
        ),
    };
    let statement = format!(
        "SELECT l.product_id, p.sku, p.name, p.category, l.warehouse_id, l.on_hand, p.reorder_level,
                l.batches, l.updated_at
           FROM {levels} l
           LEFT JOIN {products} p ON p.tenant_id = l.tenant_id AND p.product_id = l.product_id
          WHERE l.tenant_id = $1
            AND ($2{text} IS NULL OR p.category = $2)
            AND ($3{text} IS NULL OR l.warehouse_id = $3)
            AND ($4{text} IS NULL OR l.product_id = $4)
            AND (NOT $5 OR (p.reorder_level IS NOT NULL AND {low}))
            AND (NOT $6 OR EXISTS (SELECT 1 FROM {batches} WHERE {qty} > 0 AND {expiry} < $8))
            AND (NOT $7 OR EXISTS (SELECT 1 FROM {batches}
                                    WHERE {qty} > 0 AND {expiry} BETWEEN $8 AND $9))
            AND ($10{text} IS NULL OR (l.warehouse_id, l.product_id) > ($10, $11))
          ORDER BY l.warehouse_id, l.product_id
          LIMIT $12"
    );
    on_conn!(&mut reader.conn(), c => sqlx::query(&statement)
                .bind(tenant)
                .bind(&filter.category)
                .bind(&filter.warehouse_id)
                .bind(&filter.product_id)
                .bind(filter.low_stock)
                .bind(filter.expired)
                .bind(filter.near_expiry)
                .bind(filter.today)
                .bind(near_until)
                .bind(&after_warehouse)
                .bind(&after_product)
                .bind(filter.limit)
                .fetch_all(&mut **c)
                .await?
                .iter()
                .map(|row| inventory_level(row, filter.today, near_until))
                .collect())
}

fn inventory_level(
    row: &impl Portable,
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
        batches: lots(row.json("batches")?)?
            .as_slice()
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
            .collect(),
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
    let (movements, text) = match reader.conn().backend() {
        Backend::Postgres => ("stock.movements", "::text"),
        Backend::Sqlite => ("stock_movements", ""),
    };
    let statement = format!(
        "SELECT at, kind, warehouse_id, qty, balance_after, ref, event_id, transaction_id, global_position
           FROM {movements}
          WHERE tenant_id = $1 AND product_id = $2
            AND ($3{text} IS NULL OR warehouse_id = $3)
            AND (transaction_id, global_position) > ($4, $5)
          ORDER BY transaction_id, global_position
          LIMIT $6"
    );
    on_conn!(&mut reader.conn(), c => sqlx::query(&statement)
                .bind(tenant)
                .bind(product_id)
                .bind(warehouse_id)
                .bind(after.transaction_id as i64)
                .bind(after.global_position)
                .bind(limit)
                .fetch_all(&mut **c)
                .await?
                .iter()
                .map(movement_view)
                .collect())
}

fn movement_view(row: &impl Portable) -> Result<MovementView, StorageError> {
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
