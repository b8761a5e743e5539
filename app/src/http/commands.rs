//! Command handlers (`POST`/`PUT` under `/api/v1`). Each validates its body
//! into domain types, runs one aggregate command and answers
//! `{"id": …, "position": …}` where `position` is the feed token of the
//! command's last event, for `X-Min-Position` read-your-writes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDate, Utc};
use karvon_adapters::store::Executed;
use karvon_domain::ids::{product_stream_id, stock_stream_id};
use karvon_domain::product::{ProductCommand, ProductDetails};
use karvon_domain::stock::StockCommand;
use karvon_domain::{Id, Money, Quantity, TenantId};
use karvon_projections::{EventMetadata, Source};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::extract::JsonCommand;
#[allow(unused_imports)]
use super::openapi::*;
use super::{AppState, REQUEST_ID, header_text, idempotency_key};
use crate::auth::{Principal, WriteAccess};

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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveStock {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    warehouse_id: Id,
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    product_id: Id,
    #[schema(value_type = String, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "12.5")]
    qty: Quantity,
    batch: Option<String>,
    expiry_date: Option<NaiveDate>,
    #[schema(value_type = Option<String>, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "1250.50")]
    unit_cost: Option<Money>,
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    supplier_id: Option<Id>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueStock {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    warehouse_id: Id,
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    product_id: Id,
    #[schema(value_type = String, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "12.5")]
    qty: Quantity,
    reason: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStock {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    warehouse_id: Id,
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    product_id: Id,
    #[schema(value_type = String, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "1250.50")]
    counted_qty: Money,
    reason: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferStock {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    from_warehouse_id: Id,
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    to_warehouse_id: Id,
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    product_id: Id,
    #[schema(value_type = String, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "12.5")]
    qty: Quantity,
}

#[utoipa::path(post, path = "/api/v1/products", tag = "products", summary = "Register a product",
    request_body = RegisterProduct, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time")),
    responses(
        (status = 201, description = "Accepted; `position` is a read-your-writes token", body = inline(CommandAnswer)),
        (status = 409, description = "Exists with other details", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn register_product(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<RegisterProduct>,
) -> Result<Response, ApiError> {
    let request = command.body;
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        request.product_id.to_string(),
    )?;
    let details = ProductDetails {
        sku: request.sku,
        name: request.name,
        category: request.category,
        unit: request.unit,
        barcode: request.barcode,
        price: request.price,
        reorder_level: request.reorder_level,
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
    Ok(accepted(StatusCode::CREATED, executed, &context))
}

#[utoipa::path(put, path = "/api/v1/products/{id}", tag = "products", summary = "Replace a product's details",
    request_body = UpdateProduct, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time"), ("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "Accepted; `position` is a read-your-writes token", body = inline(CommandAnswer)),
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
) -> Result<Response, ApiError> {
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
    Ok(accepted(StatusCode::OK, executed, &context))
}

#[utoipa::path(post, path = "/api/v1/products/{id}/discontinue", tag = "products", summary = "Discontinue a product",
    request_body = DiscontinueProduct, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time"), ("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "Accepted; `position` is a read-your-writes token", body = inline(CommandAnswer)),
        (status = 404, description = "No such product", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn discontinue_product(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(product_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<DiscontinueProduct>,
) -> Result<Response, ApiError> {
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
    Ok(accepted(StatusCode::OK, executed, &context))
}

#[utoipa::path(post, path = "/api/v1/stock/receipts", tag = "stock", summary = "Receive stock into a batch",
    request_body = ReceiveStock, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time")),
    responses(
        (status = 201, description = "Accepted; `position` is a read-your-writes token", body = inline(CommandAnswer)),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn receive_stock(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<ReceiveStock>,
) -> Result<Response, ApiError> {
    let request = command.body;
    let (warehouse, product) = (request.warehouse_id.clone(), request.product_id.clone());
    let stock_command = StockCommand::Receive {
        warehouse_id: request.warehouse_id,
        product_id: request.product_id,
        qty: request.qty,
        batch: request.batch,
        expiry_date: request.expiry_date,
        unit_cost: request.unit_cost,
        supplier_id: request.supplier_id,
        purchase_order_id: None,
    };
    let context = CommandContext::new(&principal, &headers, command.fingerprint, new_id())?;
    run_stock_command(&state, context, &warehouse, &product, stock_command).await
}

#[utoipa::path(post, path = "/api/v1/stock/issues", tag = "stock", summary = "Issue stock (FEFO)",
    request_body = IssueStock, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time")),
    responses(
        (status = 201, description = "Accepted; `position` is a read-your-writes token", body = inline(CommandAnswer)),
        (status = 409, description = "Insufficient stock", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn issue_stock(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<IssueStock>,
) -> Result<Response, ApiError> {
    let request = command.body;
    let (warehouse, product) = (request.warehouse_id.clone(), request.product_id.clone());
    let stock_command = StockCommand::Issue {
        warehouse_id: request.warehouse_id,
        product_id: request.product_id,
        qty: request.qty,
        reason: request.reason,
    };
    let context = CommandContext::new(&principal, &headers, command.fingerprint, new_id())?;
    run_stock_command(&state, context, &warehouse, &product, stock_command).await
}

#[utoipa::path(post, path = "/api/v1/stock/adjustments", tag = "stock", summary = "Set stock to a counted quantity",
    request_body = AdjustStock, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time")),
    responses(
        (status = 201, description = "Accepted; `position` is a read-your-writes token", body = inline(CommandAnswer)),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn adjust_stock(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<AdjustStock>,
) -> Result<Response, ApiError> {
    let request = command.body;
    let (warehouse, product) = (request.warehouse_id.clone(), request.product_id.clone());
    let stock_command = StockCommand::Adjust {
        warehouse_id: request.warehouse_id,
        product_id: request.product_id,
        counted_qty: request.counted_qty,
        reason: request.reason,
    };
    let context = CommandContext::new(&principal, &headers, command.fingerprint, new_id())?;
    run_stock_command(&state, context, &warehouse, &product, stock_command).await
}

#[utoipa::path(post, path = "/api/v1/stock/transfers", tag = "stock", summary = "Transfer stock between warehouses",
    request_body = TransferStock, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time")),
    responses(
        (status = 201, description = "Accepted; `position` is a read-your-writes token", body = inline(CommandAnswer)),
        (status = 409, description = "Insufficient stock", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn transfer_stock(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<TransferStock>,
) -> Result<Response, ApiError> {
    let request = command.body;
    let transfer_id = new_id();
    let (warehouse, product) = (
        request.from_warehouse_id.clone(),
        request.product_id.clone(),
    );
    let stock_command = StockCommand::TransferOut {
        warehouse_id: request.from_warehouse_id,
        product_id: request.product_id,
        to_warehouse_id: request.to_warehouse_id,
        qty: request.qty,
        transfer_id: transfer_id.clone(),
    };
    let context = CommandContext::new(&principal, &headers, command.fingerprint, transfer_id)?;
    run_stock_command(&state, context, &warehouse, &product, stock_command).await
}

/// Checks the product, then runs a command on the stock item of
/// `warehouse` and `product` (the source side for transfers).
async fn run_stock_command(
    state: &AppState,
    context: CommandContext,
    warehouse: &Id,
    product: &Id,
    command: StockCommand,
) -> Result<Response, ApiError> {
    ensure_product(state, &context.tenant, product).await?;
    let stream = stock_stream_id(&context.tenant, warehouse, product);
    let executed = state
        .stock
        .execute(&stream, command, &context.metadata)
        .await?;
    Ok(accepted(StatusCode::CREATED, executed, &context))
}

/// Who is acting, for which tenant, and what goes into the metadata.
struct CommandContext {
    tenant: TenantId,
    metadata: EventMetadata,
}

impl CommandContext {
    fn new(
        principal: &Principal,
        headers: &HeaderMap,
        fingerprint: String,
        response_id: String,
    ) -> Result<Self, ApiError> {
        let tenant = principal.tenant.clone();
        let key = idempotency_key(headers)?;
        let metadata = EventMetadata {
            tenant_id: tenant.to_string(),
            occurred_at: Utc::now(),
            source: Source::Http.as_str().to_string(),
            actor: principal.actor.clone(),
            correlation_id: header_text(headers.get(REQUEST_ID)).unwrap_or_else(new_id),
            causation_id: None,
            request_hash: key.as_ref().map(|_| fingerprint),
            idempotency_key: key,
            response_id: Some(response_id),
        };
        Ok(Self { tenant, metadata })
    }
}

fn accepted(status: StatusCode, executed: Executed, context: &CommandContext) -> Response {
    let id = executed
        .response_id
        .or_else(|| context.metadata.response_id.clone());
    let body = json!({
        "success": true,
        "data": {"id": id, "position": executed.position.map(|position| position.to_string())},
    });
    let mut response = (status, Json(body)).into_response();
    if executed.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn path_id(raw: &str) -> Result<Id, ApiError> {
    Id::parse(raw).map_err(|error| ApiError::validation(format!("id: {error}")))
}

async fn ensure_product(
    state: &AppState,
    tenant: &TenantId,
    product_id: &Id,
) -> Result<(), ApiError> {
    const CACHE_LIMIT: usize = 1_000_000;
    let stream = product_stream_id(tenant, product_id);
    let known = |stream: &str| {
        state
            .known_products
            .read()
            .is_ok_and(|known| known.contains(stream))
    };
    if known(&stream) {
        return Ok(());
    }
    let product = state.products.load(&stream).await?;
    if product.is_registered() {
        if let Ok(mut known) = state.known_products.write() {
            if known.len() >= CACHE_LIMIT {
                known.clear();
            }
            known.insert(stream);
        }
    } else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_product",
            format!("product {product_id} is not registered"),
        ));
    }
    Ok(())
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
