//! The catalogue: register, update and discontinue products (commands on
//! the `Product` aggregate), list and read them (the catalog read model).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use karvon_adapters::read_models::catalog;
use karvon_domain::ids::product_stream_id;
use karvon_domain::product::{ProductCommand, ProductDetails};
use karvon_domain::{Id, Money};
use karvon_projections::catalog::ProductRow;
use karvon_projections::names;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::{ReadAccess, WriteAccess};
use super::command::{CommandAnswer, CommandContext, accepted, path_id};
use super::envelope::{CommandData, Envelope, Page, ok};
use super::error::{ApiError, CommandErrors, ErrorBody, QueryErrors};
use super::extract::{ApiQuery, JsonCommand};
use super::query::{finish, next_page, page_size, reader, wait_for_position};

/// The catalogue's routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_product, list_products))
        .routes(routes!(get_product, update_product))
        .routes(routes!(discontinue_product))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterProduct {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    product_id: Id,
    sku: String,
    name: String,
    category: String,
    unit: String,
    barcode: Option<String>,
    #[schema(value_type = Option<String>, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "1250.50")]
    price: Option<Money>,
    #[schema(value_type = Option<String>, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "1250.50")]
    reorder_level: Option<Money>,
    /// The product's ids in other systems (`{"regos": "101"}`): a REGOS
    /// sale line is matched to the product by its REGOS item id.
    #[serde(default)]
    external_refs: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProduct {
    sku: String,
    name: String,
    category: String,
    unit: String,
    barcode: Option<String>,
    #[schema(value_type = Option<String>, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "1250.50")]
    price: Option<Money>,
    #[schema(value_type = Option<String>, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "1250.50")]
    reorder_level: Option<Money>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscontinueProduct {
    reason: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/products", tag = "products", summary = "Register a product",
    request_body = RegisterProduct, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time")),
    responses(
        (status = 201, description = "Accepted; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        (status = 409, description = "Exists with other details", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn register_product(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<RegisterProduct>,
) -> Result<CommandAnswer, ApiError> {
    let fingerprint = command.fingerprint;
    register(&state, command.body, |id| {
        CommandContext::new(&principal, &headers, fingerprint, id)
    })
    .await
}

/// Registers a product (`POST /products`, and `product_created` webhooks);
/// `context` makes the metadata given the id the command answers.
pub(super) async fn register(
    state: &AppState,
    request: RegisterProduct,
    context: impl FnOnce(String) -> Result<CommandContext, ApiError>,
) -> Result<CommandAnswer, ApiError> {
    let context = context(request.product_id.to_string())?;
    let details = ProductDetails {
        sku: request.sku,
        name: request.name,
        category: request.category,
        unit: request.unit,
        barcode: request.barcode,
        price: request.price,
        reorder_level: request.reorder_level,
        external_refs: request.external_refs,
    };
    let stream = product_stream_id(&context.tenant, &request.product_id);
    let executed = state
        .products
        .execute(
            &stream,
            ProductCommand::Register {
                product_id: request.product_id,
                details,
            },
            &context.metadata,
        )
        .await?;
    Ok(accepted(StatusCode::CREATED, executed, context))
}

#[utoipa::path(put, path = "/api/v1/products/{id}", tag = "products", summary = "Replace a product's details",
    request_body = UpdateProduct, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time"), ("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "Accepted; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        (status = 404, description = "No such product", body = ErrorBody),
        (status = 409, description = "Discontinued", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn update_product(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(product_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<UpdateProduct>,
) -> Result<CommandAnswer, ApiError> {
    let product_id = path_id(&product_id)?;
    let request = command.body;
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        product_id.to_string(),
    )?;
    let details = ProductDetails {
        sku: request.sku,
        name: request.name,
        category: request.category,
        unit: request.unit,
        barcode: request.barcode,
        price: request.price,
        reorder_level: request.reorder_level,
        external_refs: Default::default(),
    };
    let stream = product_stream_id(&context.tenant, &product_id);
    let executed = state
        .products
        .execute(
            &stream,
            ProductCommand::Update { details },
            &context.metadata,
        )
        .await?;
    Ok(accepted(StatusCode::OK, executed, context))
}

#[utoipa::path(post, path = "/api/v1/products/{id}/discontinue", tag = "products", summary = "Discontinue a product",
    request_body = DiscontinueProduct, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time"), ("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "Accepted; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        (status = 404, description = "No such product", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn discontinue_product(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(product_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<DiscontinueProduct>,
) -> Result<CommandAnswer, ApiError> {
    let product_id = path_id(&product_id)?;
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        product_id.to_string(),
    )?;
    if let Some(reason) = &command.body.reason {
        if reason.chars().count() > 500 {
            return Err(ApiError::validation("reason: is too long"));
        }
    }
    let stream = product_stream_id(&context.tenant, &product_id);
    let executed = state
        .products
        .execute(
            &stream,
            ProductCommand::Discontinue {
                reason: command.body.reason,
            },
            &context.metadata,
        )
        .await?;
    Ok(accepted(StatusCode::OK, executed, context))
}

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
    responses((status = 200, description = "OK", body = inline(Envelope<Page<ProductView>>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn list_products(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<ProductQuery>,
) -> Result<Json<Envelope<Page<ProductView>>>, ApiError> {
    wait_for_position(&state, &principal, &headers, &[names::CATALOG]).await?;
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
    let rows = catalog::list_products(&mut tx, principal.tenant.as_str(), &filter).await?;
    finish(tx).await?;
    let mut items: Vec<ProductView> = rows.into_iter().map(ProductView::from).collect();
    let next_cursor = next_page(&mut items, limit).map(|last| last.product_id.clone());
    Ok(ok(Page { items, next_cursor }))
}

#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "products", summary = "One product",
    params(("id" = String, Path, description = "Product id"), ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<ProductView>)), (status = 404, description = "Not found", body = ErrorBody), QueryErrors),
    security(("bearer" = [])))]
pub async fn get_product(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    Path(product_id): Path<String>,
) -> Result<Json<Envelope<ProductView>>, ApiError> {
    let product_id =
        Id::parse(product_id).map_err(|error| ApiError::validation(format!("id: {error}")))?;
    wait_for_position(&state, &principal, &headers, &[names::CATALOG]).await?;
    let mut tx = reader(&state, &principal).await?;
    let product =
        catalog::get_product(&mut tx, principal.tenant.as_str(), product_id.as_str()).await?;
    finish(tx).await?;
    let product = product.ok_or_else(|| ApiError::not_found("product not found"))?;
    Ok(ok(ProductView::from(product)))
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

impl From<ProductRow> for ProductView {
    fn from(row: ProductRow) -> Self {
        Self {
            product_id: row.product_id,
            sku: row.sku,
            name: row.name,
            category: row.category,
            unit: row.unit,
            barcode: row.barcode,
            price: row.price,
            reorder_level: row.reorder_level,
            status: catalog::status_text(row.status),
            external_refs: row.external_refs,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}
