//! The product catalogue read model (`catalog.products`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use karvon_domain::product::{Product, ProductEvent, ProductStatus};
use karvon_projections::catalog::{self, ProductRow};
use karvon_projections::names;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::StorageError;
use crate::db::{Backend, Conn, Portable, on_conn};
use crate::feed::FeedEvent;
use crate::read_models::Reader;
use crate::runner::Projection;

pub struct CatalogProjection;

#[async_trait::async_trait]
impl Projection for CatalogProjection {
    fn name(&self) -> &'static str {
        names::CATALOG
    }

    fn tables(&self) -> &'static [&'static str] {
        &["products"]
    }

    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
        let backend = conn.backend();
        let products = backend.table(schema, "products");
        let index = backend.index(schema, "products_category_idx");
        // Same columns on both backends; SQLite keeps decimals as text.
        let (decimal, json, time) = match backend {
            Backend::Postgres => ("numeric", "jsonb", "timestamptz"),
            Backend::Sqlite => ("text", "text", "text"),
        };
        for statement in [
            format!(
                "CREATE TABLE IF NOT EXISTS {products} (
                     tenant_id     text    NOT NULL,
                     product_id    text    NOT NULL,
                     sku           text    NOT NULL,
                     name          text    NOT NULL,
                     category      text    NOT NULL,
                     unit          text    NOT NULL,
                     barcode       text,
                     price         {decimal},
                     reorder_level {decimal},
                     status        text    NOT NULL,
                     external_refs {json}  NOT NULL DEFAULT '{{}}',
                     created_at    {time}  NOT NULL,
                     updated_at    {time}  NOT NULL,
                     PRIMARY KEY (tenant_id, product_id)
                 )"
            ),
            format!(
                "CREATE INDEX IF NOT EXISTS {index} ON {products} (tenant_id, category, product_id)"
            ),
        ] {
            conn.execute(&statement).await?;
        }
        super::secure_tables(conn, schema, &["products"]).await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        let product_events = super::events_of::<Product>(events)?;
        if product_events.is_empty() {
            return Ok(());
        }
        let products = conn.backend().table(schema, "products");
        let keys: Vec<(String, String)> = product_events
            .iter()
            .map(|(event, payload)| {
                (
                    event.metadata.tenant_id.clone(),
                    product_id(payload).to_string(),
                )
            })
            .collect();
        let mut rows = load_rows(conn, &products, &keys).await?;
        for ((event, payload), key) in product_events.iter().zip(keys) {
            let current = rows.remove(&key).flatten();
            let row = catalog::apply(
                current,
                &event.metadata.tenant_id,
                payload,
                event.metadata.occurred_at,
            );
            rows.insert(key, row);
        }
        upsert(conn, &products, rows.into_values().flatten().collect()).await
    }
}

fn product_id(event: &ProductEvent) -> &karvon_domain::Id {
    match event {
        ProductEvent::ProductRegistered { product_id, .. }
        | ProductEvent::ProductUpdated { product_id, .. }
        | ProductEvent::ProductDiscontinued { product_id, .. } => product_id,
    }
}

type RowMap = HashMap<(String, String), Option<ProductRow>>;

const COLUMNS: &str = "tenant_id, product_id, sku, name, category, unit, barcode, price, reorder_level, status, created_at, updated_at";

async fn load_rows(
    conn: &mut Conn<'_>,
    products: &str,
    keys: &[(String, String)],
) -> Result<RowMap, StorageError> {
    let (tenants, ids): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let found = match conn {
        Conn::Postgres(conn) => sqlx::query(&format!(
            "SELECT {COLUMNS} FROM {products}
              WHERE (tenant_id, product_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))"
        ))
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(&mut **conn)
        .await?
        .iter()
        .map(row_to_product)
        .collect::<Result<Vec<_>, _>>()?,
        Conn::Sqlite(conn) => sqlx::query(&format!(
            "SELECT {COLUMNS} FROM {products}
              WHERE (tenant_id, product_id) IN
                    (SELECT t.value, p.value FROM json_each($1) t JOIN json_each($2) p ON p.key = t.key)"
        ))
        .bind(crate::db::json_list(&tenants))
        .bind(crate::db::json_list(&ids))
        .fetch_all(&mut **conn)
        .await?
        .iter()
        .map(row_to_product)
        .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(found
        .into_iter()
        .map(|product| {
            (
                (product.tenant_id.clone(), product.product_id.clone()),
                Some(product),
            )
        })
        .collect())
}

fn row_to_product(row: &impl Portable) -> Result<ProductRow, StorageError> {
    Ok(ProductRow {
        tenant_id: row.text("tenant_id")?,
        product_id: row.text("product_id")?,
        sku: row.text("sku")?,
        name: row.text("name")?,
        category: row.text("category")?,
        unit: row.text("unit")?,
        barcode: row.opt_text("barcode")?,
        price: row.opt_decimal("price")?,
        reorder_level: row.opt_decimal("reorder_level")?,
        status: parse_status(&row.text("status")?)?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

fn parse_status(text: &str) -> Result<ProductStatus, StorageError> {
    match text {
        "active" => Ok(ProductStatus::Active),
        "discontinued" => Ok(ProductStatus::Discontinued),
        other => Err(StorageError::Corrupt(format!("product status {other:?}"))),
    }
}

fn status_text(status: ProductStatus) -> &'static str {
    match status {
        ProductStatus::Active => "active",
        ProductStatus::Discontinued => "discontinued",
    }
}

async fn upsert(
    conn: &mut Conn<'_>,
    products: &str,
    rows: Vec<ProductRow>,
) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    const ON_CONFLICT: &str = "ON CONFLICT (tenant_id, product_id) DO UPDATE SET
             sku = excluded.sku, name = excluded.name, category = excluded.category,
             unit = excluded.unit, barcode = excluded.barcode, price = excluded.price,
             reorder_level = excluded.reorder_level, status = excluded.status,
             updated_at = excluded.updated_at";
    let conn = match conn {
        Conn::Postgres(conn) => conn,
        Conn::Sqlite(conn) => {
            // In-process: a prepared statement per row costs no round trip.
            let statement = format!(
                "INSERT INTO {products} ({COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) {ON_CONFLICT}"
            );
            for row in rows {
                sqlx::query(&statement)
                    .bind(row.tenant_id)
                    .bind(row.product_id)
                    .bind(row.sku)
                    .bind(row.name)
                    .bind(row.category)
                    .bind(row.unit)
                    .bind(row.barcode)
                    .bind(row.price.map(|price| price.to_string()))
                    .bind(row.reorder_level.map(|level| level.to_string()))
                    .bind(status_text(row.status))
                    .bind(row.created_at)
                    .bind(row.updated_at)
                    .execute(&mut **conn)
                    .await?;
            }
            return Ok(());
        }
    };
    let mut columns = UpsertColumns::default();
    for row in rows {
        columns.tenant_id.push(row.tenant_id);
        columns.product_id.push(row.product_id);
        columns.sku.push(row.sku);
        columns.name.push(row.name);
        columns.category.push(row.category);
        columns.unit.push(row.unit);
        columns.barcode.push(row.barcode);
        columns.price.push(row.price);
        columns.reorder_level.push(row.reorder_level);
        columns.status.push(status_text(row.status).to_string());
        columns.created_at.push(row.created_at);
        columns.updated_at.push(row.updated_at);
    }
    sqlx::query(&format!(
        "INSERT INTO {products} ({COLUMNS})
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                              $7::text[], $8::numeric[], $9::numeric[], $10::text[], $11::timestamptz[],
                              $12::timestamptz[])
         {ON_CONFLICT}"
    ))
    .bind(columns.tenant_id)
    .bind(columns.product_id)
    .bind(columns.sku)
    .bind(columns.name)
    .bind(columns.category)
    .bind(columns.unit)
    .bind(columns.barcode)
    .bind(columns.price)
    .bind(columns.reorder_level)
    .bind(columns.status)
    .bind(columns.created_at)
    .bind(columns.updated_at)
    .execute(&mut **conn)
    .await?;
    Ok(())
}

#[derive(Default)]
struct UpsertColumns {
    tenant_id: Vec<String>,
    product_id: Vec<String>,
    sku: Vec<String>,
    name: Vec<String>,
    category: Vec<String>,
    unit: Vec<String>,
    barcode: Vec<Option<String>>,
    price: Vec<Option<Decimal>>,
    reorder_level: Vec<Option<Decimal>>,
    status: Vec<String>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
}

/// A catalogue entry as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ProductView {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub unit: String,
    pub barcode: Option<String>,
    pub price: Option<Decimal>,
    pub reorder_level: Option<Decimal>,
    /// `active` or `discontinued`.
    #[schema(value_type = String)]
    pub status: &'static str,
    /// 1C GUID, REGOS id and the like, by system.
    #[schema(value_type = Object)]
    pub external_refs: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default)]
pub struct ProductFilter {
    pub category: Option<String>,
    pub q: Option<String>,
    pub status: Option<String>,
    pub after: Option<String>,
    pub limit: i64,
}

pub async fn list_products(
    reader: &mut Reader,
    tenant: &str,
    filter: &ProductFilter,
) -> Result<Vec<ProductView>, StorageError> {
    let pattern = filter.q.as_ref().map(|q| {
        format!(
            "%{}%",
            q.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        )
    });
    // The same query; PostgreSQL wants the parameter types spelled out,
    // SQLite's LIKE is case-insensitive (ASCII) and needs its escape named.
    let (products, text, matches) = match reader.conn().backend() {
        Backend::Postgres => (
            "catalog.products",
            "::text",
            "name ILIKE $4 OR sku ILIKE $4 OR barcode ILIKE $4",
        ),
        Backend::Sqlite => (
            "catalog_products",
            "",
            "name LIKE $4 ESCAPE '\\' OR sku LIKE $4 ESCAPE '\\' OR barcode LIKE $4 ESCAPE '\\'",
        ),
    };
    let statement = format!(
        "SELECT {COLUMNS}, external_refs FROM {products}
          WHERE tenant_id = $1
            AND ($2{text} IS NULL OR category = $2)
            AND ($3{text} IS NULL OR status = $3)
            AND ($4{text} IS NULL OR {matches})
            AND ($5{text} IS NULL OR product_id > $5)
          ORDER BY product_id
          LIMIT $6"
    );
    on_conn!(&mut reader.conn(), c => sqlx::query(&statement)
        .bind(tenant)
        .bind(&filter.category)
        .bind(&filter.status)
        .bind(&pattern)
        .bind(&filter.after)
        .bind(filter.limit)
        .fetch_all(&mut **c)
        .await?
        .iter()
        .map(row_to_view)
        .collect())
}

pub async fn get_product(
    reader: &mut Reader,
    tenant: &str,
    product_id: &str,
) -> Result<Option<ProductView>, StorageError> {
    let products = reader.conn().backend().table("catalog", "products");
    let statement = format!(
        "SELECT {COLUMNS}, external_refs FROM {products} WHERE tenant_id = $1 AND product_id = $2"
    );
    on_conn!(&mut reader.conn(), c => sqlx::query(&statement)
        .bind(tenant)
        .bind(product_id)
        .fetch_optional(&mut **c)
        .await?
        .as_ref()
        .map(row_to_view)
        .transpose())
}

fn row_to_view(row: &impl Portable) -> Result<ProductView, StorageError> {
    let product = row_to_product(row)?;
    Ok(ProductView {
        product_id: product.product_id,
        sku: product.sku,
        name: product.name,
        category: product.category,
        unit: product.unit,
        barcode: product.barcode,
        price: product.price,
        reorder_level: product.reorder_level,
        status: status_text(product.status),
        external_refs: row.json("external_refs")?,
        created_at: product.created_at,
        updated_at: product.updated_at,
    })
}
