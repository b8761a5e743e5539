//! The product catalogue read model (`catalog.products`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use karvon_domain::product::{Product, ProductEvent, ProductStatus};
use karvon_projections::catalog::{self, ProductRow};
use karvon_projections::names;
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::StorageError;
use crate::feed::FeedEvent;
use crate::runner::FeedHandler;

pub struct CatalogProjection;

#[async_trait::async_trait]
impl FeedHandler for CatalogProjection {
    fn name(&self) -> &'static str {
        names::CATALOG
    }

    fn schema(&self) -> Option<&'static str> {
        Some("catalog")
    }

    async fn create_tables(
        &self,
        conn: &mut PgConnection,
        schema: &str,
    ) -> Result<(), StorageError> {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.products (
                 tenant_id     text        NOT NULL,
                 product_id    text        NOT NULL,
                 sku           text        NOT NULL,
                 name          text        NOT NULL,
                 category      text        NOT NULL,
                 unit          text        NOT NULL,
                 barcode       text,
                 price         numeric,
                 reorder_level numeric,
                 status        text        NOT NULL,
                 external_refs jsonb       NOT NULL DEFAULT '{{}}',
                 created_at    timestamptz NOT NULL,
                 updated_at    timestamptz NOT NULL,
                 PRIMARY KEY (tenant_id, product_id)
             )"
        ))
        .execute(&mut *conn)
        .await?;
        sqlx::query(&format!(
            "CREATE INDEX IF NOT EXISTS products_category_idx ON {schema}.products (tenant_id, category, product_id)"
        ))
        .execute(&mut *conn)
        .await?;
        super::secure_tables(conn, schema, &["products"]).await?;
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        let product_events = super::events_of::<Product>(events)?;
        if product_events.is_empty() {
            return Ok(());
        }
        let keys: Vec<(String, String)> = product_events
            .iter()
            .map(|(event, payload)| {
                (
                    event.metadata.tenant_id.clone(),
                    product_id(payload).to_string(),
                )
            })
            .collect();
        let mut rows = load_rows(conn, &keys).await?;
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
        upsert(conn, rows.into_values().flatten().collect()).await
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
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> Result<RowMap, StorageError> {
    let (tenants, ids): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM products
          WHERE (tenant_id, product_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))"
    ))
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    let mut map = RowMap::new();
    for row in rows {
        let product = row_to_product(&row)?;
        map.insert(
            (product.tenant_id.clone(), product.product_id.clone()),
            Some(product),
        );
    }
    Ok(map)
}

fn row_to_product(row: &sqlx::postgres::PgRow) -> Result<ProductRow, StorageError> {
    let status: String = row.try_get("status")?;
    Ok(ProductRow {
        tenant_id: row.try_get("tenant_id")?,
        product_id: row.try_get("product_id")?,
        sku: row.try_get("sku")?,
        name: row.try_get("name")?,
        category: row.try_get("category")?,
        unit: row.try_get("unit")?,
        barcode: row.try_get("barcode")?,
        price: row.try_get("price")?,
        reorder_level: row.try_get("reorder_level")?,
        status: parse_status(&status)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
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

async fn upsert(conn: &mut PgConnection, rows: Vec<ProductRow>) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
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
        "INSERT INTO products ({COLUMNS})
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                              $7::text[], $8::numeric[], $9::numeric[], $10::text[], $11::timestamptz[],
                              $12::timestamptz[])
         ON CONFLICT (tenant_id, product_id) DO UPDATE SET
             sku = EXCLUDED.sku, name = EXCLUDED.name, category = EXCLUDED.category,
             unit = EXCLUDED.unit, barcode = EXCLUDED.barcode, price = EXCLUDED.price,
             reorder_level = EXCLUDED.reorder_level, status = EXCLUDED.status,
             updated_at = EXCLUDED.updated_at"
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
    .execute(conn)
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
    conn: &mut PgConnection,
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
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS}, external_refs FROM catalog.products
          WHERE tenant_id = $1
            AND ($2::text IS NULL OR category = $2)
            AND ($3::text IS NULL OR status = $3)
            AND ($4::text IS NULL OR name ILIKE $4 OR sku ILIKE $4 OR barcode ILIKE $4)
            AND ($5::text IS NULL OR product_id > $5)
          ORDER BY product_id
          LIMIT $6"
    ))
    .bind(tenant)
    .bind(&filter.category)
    .bind(&filter.status)
    .bind(pattern)
    .bind(&filter.after)
    .bind(filter.limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(row_to_view).collect()
}

pub async fn get_product(
    conn: &mut PgConnection,
    tenant: &str,
    product_id: &str,
) -> Result<Option<ProductView>, StorageError> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS}, external_refs FROM catalog.products WHERE tenant_id = $1 AND product_id = $2"
    ))
    .bind(tenant)
    .bind(product_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(row_to_view).transpose()
}

fn row_to_view(row: &sqlx::postgres::PgRow) -> Result<ProductView, StorageError> {
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
        external_refs: row.try_get("external_refs")?,
        created_at: product.created_at,
        updated_at: product.updated_at,
    })
}
