//! The product catalogue: one row per product, shaped like the API answer.

use chrono::{DateTime, Utc};
use karvon_domain::product::{ProductEvent, ProductStatus};
use rust_decimal::Decimal;

#[derive(Debug, Clone, PartialEq)]
pub struct ProductRow {
    pub tenant_id: String,
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub category: String,
    pub unit: String,
    pub barcode: Option<String>,
    pub price: Option<Decimal>,
    pub reorder_level: Option<Decimal>,
    pub status: ProductStatus,
    /// 1C GUID, REGOS id and the like, by system (`{}` until an import
    /// sets them).
    pub external_refs: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Folds one product event into the product's row (`None` before it is
/// registered).
pub fn apply(
    row: Option<ProductRow>,
    tenant_id: &str,
    event: &ProductEvent,
    at: DateTime<Utc>,
) -> Option<ProductRow> {
    match event {
        ProductEvent::ProductRegistered {
            product_id,
            details,
        }
        | ProductEvent::ProductUpdated {
            product_id,
            details,
        } => {
            let created_at = row.as_ref().map_or(at, |row| row.created_at);
            let status = row.as_ref().map_or(ProductStatus::Active, |row| row.status);
            let mut refs = match row.as_ref().map(|row| &row.external_refs) {
                Some(serde_json::Value::Object(known)) => known.clone(),
                _ => Default::default(),
            };
            for (system, reference) in &details.external_refs {
                refs.insert(system.clone(), reference.clone().into());
            }
            let external_refs = serde_json::Value::Object(refs);
            Some(ProductRow {
                tenant_id: tenant_id.to_string(),
                product_id: product_id.to_string(),
                sku: details.sku.clone(),
                name: details.name.clone(),
                category: details.category.clone(),
                unit: details.unit.clone(),
                barcode: details.barcode.clone(),
                price: details.price.map(|price| price.value()),
                reorder_level: details.reorder_level.map(|level| level.value()),
                status,
                external_refs,
                created_at,
                updated_at: at,
            })
        }
        ProductEvent::ProductDiscontinued { .. } => row.map(|row| ProductRow {
            status: ProductStatus::Discontinued,
            updated_at: at,
            ..row
        }),
    }
}
