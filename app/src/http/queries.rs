//! Query handlers. All read the tenant's rows only; list answers put rows
//! in `data.items` with `data.next_cursor` where paged. `X-Min-Position`
//! makes a query wait (bounded) until the projections it reads have applied
//! the given command.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use karvon_adapters::read_models::{self, Reader, catalog, stock};
use karvon_adapters::runner;
use karvon_domain::Id;
use karvon_projections::{Position, PositionToken, names};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::ApiQuery;
#[allow(unused_imports)]
use super::openapi::*;
use crate::auth::{Principal, ReadAccess};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProductQuery {
    category: Option<String>,
    q: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/products", tag = "products", summary = "List the catalogue",
    params(ProductQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(ProductPage)), QueryErrors),
    security(("bearer" = [])))]
pub async fn list_products(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ProductQuery>,
) -> Result<Json<Value>, ApiError> {
    wait_for_position(&state, &headers, &[names::CATALOG]).await?;
    if let Some(status) = &query.status {
        if status != "active" && status != "discontinued" {
            return Err(ApiError::validation(
                "status must be active or discontinued",
            ));
        }
    }
    let limit = page_size(query.limit)?;
    let filter = catalog::ProductFilter {
        category: query.category,
        q: query.q,
        status: query.status,
        after: query.cursor,
        limit: limit + 1,
    };
    let mut tx = reader(&state, &principal).await?;
    let mut items = catalog::list_products(&mut tx, principal.tenant.as_str(), &filter).await?;
    finish(tx).await?;
    let next_cursor = next_page(&mut items, limit).map(|last| last.product_id.clone());
    Ok(ok(json!({"items": items, "next_cursor": next_cursor})))
}

#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "products", summary = "One product",
    params(("id" = String, Path, description = "Product id"), ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(ProductAnswer)), (status = 404, description = "Not found", body = ErrorBody), QueryErrors),
    security(("bearer" = [])))]
pub async fn get_product(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    Path(product_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let product_id =
        Id::parse(product_id).map_err(|error| ApiError::validation(format!("id: {error}")))?;
    wait_for_position(&state, &headers, &[names::CATALOG]).await?;
    let mut tx = reader(&state, &principal).await?;
    let product =
        catalog::get_product(&mut tx, principal.tenant.as_str(), product_id.as_str()).await?;
    finish(tx).await?;
    let product = product.ok_or_else(|| ApiError::not_found("product not found"))?;
    Ok(ok(json!(product)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InventoryQuery {
    category: Option<String>,
    warehouse_id: Option<String>,
    product_id: Option<String>,
    low_stock: Option<bool>,
    expired: Option<bool>,
    near_expiry: Option<bool>,
    near_expiry_days: Option<i64>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/integrations/inventory-levels", tag = "stock", summary = "Stock levels per warehouse and product",
    params(InventoryQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(InventoryPage)), QueryErrors),
    security(("bearer" = [])))]
pub async fn inventory_levels(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<InventoryQuery>,
) -> Result<Json<Value>, ApiError> {
    wait_for_position(&state, &headers, &[names::CATALOG, names::STOCK]).await?;
    let limit = page_size(query.limit)?;
    let near_expiry_days = query.near_expiry_days.unwrap_or(30);
    if !(0..=3650).contains(&near_expiry_days) {
        return Err(ApiError::validation(
            "near_expiry_days must be between 0 and 3650",
        ));
    }
    let after = match &query.cursor {
        Some(cursor) => Some(
            cursor
                .split_once('~')
                .map(|(warehouse, product)| (warehouse.to_string(), product.to_string()))
                .ok_or_else(|| ApiError::validation("cursor is not one this endpoint gave out"))?,
        ),
        None => None,
    };
    let filter = stock::InventoryFilter {
        category: query.category,
        warehouse_id: query.warehouse_id,
        product_id: query.product_id,
        low_stock: query.low_stock.unwrap_or(false),
        expired: query.expired.unwrap_or(false),
        near_expiry: query.near_expiry.unwrap_or(false),
        near_expiry_days,
        today: principal.today(),
        after,
        limit: limit + 1,
    };
    let mut tx = reader(&state, &principal).await?;
    let mut items = stock::inventory_levels(&mut tx, principal.tenant.as_str(), &filter).await?;
    finish(tx).await?;
    let next_cursor = next_page(&mut items, limit)
        .map(|last| format!("{}~{}", last.warehouse_id, last.product_id));
    Ok(ok(json!({"items": items, "next_cursor": next_cursor})))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MovementQuery {
    product_id: Option<String>,
    warehouse_id: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/integrations/product-movement-history", tag = "stock", summary = "Movements of a product, oldest first",
    params(MovementQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(MovementPage)), QueryErrors),
    security(("bearer" = [])))]
pub async fn movement_history(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<MovementQuery>,
) -> Result<Json<Value>, ApiError> {
    let product_id = query
        .product_id
        .ok_or_else(|| ApiError::validation("product_id is required"))?;
    wait_for_position(&state, &headers, &[names::STOCK]).await?;
    let limit = match query.limit {
        None => 10_000,
        Some(limit) => page_size(Some(limit))?,
    };
    let after = query
        .cursor
        .map(|cursor| cursor.parse::<Position>())
        .transpose()
        .map_err(|_| ApiError::validation("cursor is not one this endpoint gave out"))?;
    let mut tx = reader(&state, &principal).await?;
    let mut items = stock::movement_history(
        &mut tx,
        principal.tenant.as_str(),
        &product_id,
        query.warehouse_id.as_deref(),
        after,
        limit + 1,
    )
    .await?;
    finish(tx).await?;
    let next_cursor = next_page(&mut items, limit).map(|last| last.position.clone());
    Ok(ok(
        json!({"product_id": product_id, "items": items, "next_cursor": next_cursor}),
    ))
}

/// A read transaction for the caller's tenant (on PostgreSQL as the query
/// role: the row-level-security wall).
async fn reader(state: &AppState, principal: &Principal) -> Result<Reader, ApiError> {
    Ok(read_models::tenant_reader(&state.db, principal.tenant.as_str()).await?)
}

/// Ends a reader at once: a dropped transaction would only roll back when
/// its connection is next used, holding its table locks (and blocking a
/// rebuild's swap) while it idles in the pool.
async fn finish(reader: Reader) -> Result<(), ApiError> {
    Ok(reader.finish().await?)
}

fn ok(data: Value) -> Json<Value> {
    Json(json!({"success": true, "data": data}))
}

/// `limit` defaults to 100 and is capped at 1000; zero or less is refused.
fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(limit) if limit < 1 => Err(ApiError::validation("limit must be at least 1")),
        Some(limit) => Ok(limit.min(MAX_PAGE)),
    }
}

/// Trims the look-ahead row and returns the last row kept when there is a
/// further page.
fn next_page<T>(items: &mut Vec<T>, limit: i64) -> Option<&T> {
    if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last()
    } else {
        None
    }
}

async fn wait_for_position(
    state: &AppState,
    headers: &HeaderMap,
    projections: &[&str],
) -> Result<(), ApiError> {
    let Some(value) = headers.get("x-min-position") else {
        return Ok(());
    };
    let target: PositionToken = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().trim_matches('"').parse().ok())
        .ok_or_else(|| {
            ApiError::validation("X-Min-Position is not a position a command answered with")
        })?;
    let wait = state.min_position_wait.min(Duration::from_secs(5));
    if runner::wait_until_applied(&state.db, projections, &target, wait).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_caught_up",
            "the read model has not reached the requested position yet; retry",
        ))
    }
}
