//! The product catalogue read model (`catalog.products`): the pure fold
//! `karvon_projections::catalog`, the row's storage declaration, and the
//! queries.

use cqrs_es::Aggregate;
use karvon_domain::product::{Product, ProductEvent, ProductStatus};
use karvon_projections::catalog::{self, ProductRow};
use karvon_projections::names;
use std::collections::HashMap;

use crate::StorageError;
use crate::db::{Conn, Portable, like_pattern};
use crate::feed::FeedEvent;

use crate::records::{self, Field, Reader, Record, SqlType, Value, record};
use crate::runner::Projection;

record! {
    ProductRow => "products", key(tenant_id, product_id),
    index products_category_idx(tenant_id, category, product_id),
    {
        tenant_id, product_id, sku, name, category, unit, barcode, price, reorder_level,
        status, external_refs, created_at, updated_at,
    }
}

impl Field for ProductStatus {
    const TYPE: SqlType = SqlType::Text;
    fn value(&self) -> Value {
        Value::Text(Some(status_text(*self).to_string()))
    }
    fn read(row: &(impl Portable + ?Sized), column: &str) -> Result<Self, StorageError> {
        match row.text(column)?.as_str() {
            "active" => Ok(ProductStatus::Active),
            "discontinued" => Ok(ProductStatus::Discontinued),
            other => Err(StorageError::Corrupt(format!("product status {other:?}"))),
        }
    }
}

/// How the API and the table spell a status.
pub fn status_text(status: ProductStatus) -> &'static str {
    match status {
        ProductStatus::Active => "active",
        ProductStatus::Discontinued => "discontinued",
    }
}

pub struct CatalogProjection;

#[async_trait::async_trait]
impl Projection for CatalogProjection {
    fn name(&self) -> &'static str {
        names::CATALOG
    }

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[Product::TYPE])
    }

    fn tables(&self) -> &'static [&'static str] {
        &[ProductRow::TABLE]
    }

    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
        records::create::<ProductRow>(conn, schema).await
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        let items = super::events_of::<Product>(events)?
            .into_iter()
            .map(|(event, payload)| {
                let key = vec![
                    Value::Text(Some(event.metadata.tenant_id.clone())),
                    Value::Text(Some(product_id(&payload).to_string())),
                ];
                (key, (event, payload))
            })
            .collect();
        records::fold(conn, schema, items, |row, (event, payload)| {
            let at = event.metadata.occurred_at;
            catalog::apply(row, &event.metadata.tenant_id, &payload, at)
        })
        .await
    }
}

fn product_id(event: &ProductEvent) -> &karvon_domain::Id {
    match event {
        ProductEvent::ProductRegistered { product_id, .. }
        | ProductEvent::ProductUpdated { product_id, .. }
        | ProductEvent::ProductDiscontinued { product_id, .. } => product_id,
    }
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
) -> Result<Vec<ProductRow>, StorageError> {
    let mut conn = reader.conn();
    let backend = conn.backend();
    let text = |param| backend.text_param(param);
    let matches: Vec<String> = ["name", "sku", "barcode"]
        .iter()
        .map(|column| backend.contains(column, "$4"))
        .collect();
    let statement = format!(
        "SELECT {} FROM {}
          WHERE tenant_id = $1
            AND ({} IS NULL OR category = $2)
            AND ({} IS NULL OR status = $3)
            AND ({} IS NULL OR {})
            AND ({} IS NULL OR product_id > $5)
          ORDER BY product_id
          LIMIT $6",
        ProductRow::column_list(),
        backend.table(names::CATALOG, ProductRow::TABLE),
        text("$2"),
        text("$3"),
        text("$4"),
        matches.join(" OR "),
        text("$5"),
    );
    let params = vec![
        Value::Text(Some(tenant.to_string())),
        Value::Text(filter.category.clone()),
        Value::Text(filter.status.clone()),
        Value::Text(filter.q.as_deref().map(like_pattern)),
        Value::Text(filter.after.clone()),
        Value::BigInt(Some(filter.limit)),
    ];
    records::fetch_records(&mut conn, &statement, params).await
}

pub async fn get_product(
    reader: &mut Reader,
    tenant: &str,
    product_id: &str,
) -> Result<Option<ProductRow>, StorageError> {
    let mut conn = reader.conn();
    let statement = format!(
        "SELECT {} FROM {} WHERE tenant_id = $1 AND product_id = $2",
        ProductRow::column_list(),
        conn.backend().table(names::CATALOG, ProductRow::TABLE),
    );
    let params = vec![
        Value::Text(Some(tenant.to_string())),
        Value::Text(Some(product_id.to_string())),
    ];
    Ok(records::fetch_records(&mut conn, &statement, params)
        .await?
        .pop())
}

/// The names of the tenant's products among `product_ids`, in one query.
pub async fn product_names(
    reader: &mut Reader,
    tenant: &str,
    product_ids: &[String],
) -> Result<std::collections::HashMap<String, String>, StorageError> {
    let keys = product_ids
        .iter()
        .map(|id| {
            vec![
                Value::Text(Some(tenant.to_string())),
                Value::Text(Some(id.clone())),
            ]
        })
        .collect();
    Ok(
        records::load::<ProductRow>(&mut reader.conn(), names::CATALOG, keys)
            .await?
            .into_iter()
            .map(|row| (row.product_id, row.name))
            .collect(),
    )
}

/// The tenant's products known by an id in `system` (`external_refs`) or
/// by barcode: (reference → product id, barcode → product id).
pub async fn by_reference_or_barcode(
    reader: &mut Reader,
    tenant: &str,
    system: &str,
    references: &[String],
    barcodes: &[String],
) -> Result<(HashMap<String, String>, HashMap<String, String>), StorageError> {
    let mut conn = reader.conn();
    let backend = conn.backend();
    let reference = backend.json_text("external_refs", system);
    let statement = format!(
        "SELECT product_id, barcode, {reference} AS reference FROM {}
          WHERE tenant_id = $1
            AND ({reference} IN ({}) OR barcode IN ({}))
          ORDER BY product_id",
        backend.table(names::CATALOG, ProductRow::TABLE),
        backend.text_list("$2"),
        backend.text_list("$3"),
    );
    let list = |items: &[String]| Value::Text(serde_json::to_string(items).ok());
    let rows = records::fetch(
        &mut conn,
        &statement,
        vec![
            Value::Text(Some(tenant.to_string())),
            list(references),
            list(barcodes),
        ],
        |row| {
            Ok((
                row.text("product_id")?,
                row.opt_text("barcode")?,
                row.opt_text("reference")?,
            ))
        },
    )
    .await?;
    let (mut by_reference, mut by_barcode) = (HashMap::new(), HashMap::new());
    for (product, barcode, reference) in rows {
        if let Some(reference) = reference {
            by_reference
                .entry(reference)
                .or_insert_with(|| product.clone());
        }
        if let Some(barcode) = barcode {
            by_barcode.entry(barcode).or_insert(product);
        }
    }
    Ok((by_reference, by_barcode))
}
