//! Stock: receipts, issues, adjustments and transfers (commands on the
//! `StockItem` of a warehouse and product), levels and movement history
//! (the stock read model, under `/api/integrations`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::NaiveDate;
use karvon_adapters::read_models::stock::{self, InventoryLevel, MovementView};
use karvon_domain::ids::stock_stream_id;
use karvon_domain::stock::StockCommand;
use karvon_domain::{Id, Money, Quantity, TenantId};
use karvon_projections::{Position, names};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::{ReadAccess, WriteAccess};
use super::command::{CommandAnswer, CommandContext, accepted, new_id, product_known};
use super::envelope::{CommandData, Envelope, Page, ok};
use super::error::{ApiError, CommandErrors, ErrorBody, QueryErrors};
use super::extract::{ApiQuery, JsonCommand};
use super::query::{finish, next_page, page_size, reader, wait_for_position};

/// The stock routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(receive_stock))
        .routes(routes!(issue_stock))
        .routes(routes!(adjust_stock))
        .routes(routes!(transfer_stock))
        .routes(routes!(inventory_levels))
        .routes(routes!(movement_history))
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

#[utoipa::path(post, path = "/api/v1/stock/receipts", tag = "stock", summary = "Receive stock into a batch",
    request_body = ReceiveStock, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time")),
    responses(
        (status = 201, description = "Accepted; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn receive_stock(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<ReceiveStock>,
) -> Result<CommandAnswer, ApiError> {
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
        (status = 201, description = "Accepted; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        (status = 409, description = "Insufficient stock", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn issue_stock(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<IssueStock>,
) -> Result<CommandAnswer, ApiError> {
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
        (status = 201, description = "Accepted; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn adjust_stock(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<AdjustStock>,
) -> Result<CommandAnswer, ApiError> {
    let fingerprint = command.fingerprint;
    adjust(&state, command.body, |id| {
        CommandContext::new(&principal, &headers, fingerprint, id)
    })
    .await
}

/// Sets stock to a counted quantity (`POST /stock/adjustments`, and
/// `stock_updated` webhooks); `context` makes the metadata given the id the
/// command answers.
pub(super) async fn adjust(
    state: &AppState,
    request: AdjustStock,
    context: impl FnOnce(String) -> Result<CommandContext, ApiError>,
) -> Result<CommandAnswer, ApiError> {
    let (warehouse, product) = (request.warehouse_id.clone(), request.product_id.clone());
    let stock_command = StockCommand::Adjust {
        warehouse_id: request.warehouse_id,
        product_id: request.product_id,
        counted_qty: request.counted_qty,
        reason: request.reason,
    };
    let context = context(new_id())?;
    run_stock_command(state, context, &warehouse, &product, stock_command).await
}

#[utoipa::path(post, path = "/api/v1/stock/transfers", tag = "stock", summary = "Transfer stock between warehouses",
    request_body = TransferStock, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time")),
    responses(
        (status = 201, description = "Accepted; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        (status = 409, description = "Insufficient stock", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn transfer_stock(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<TransferStock>,
) -> Result<CommandAnswer, ApiError> {
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
) -> Result<CommandAnswer, ApiError> {
    ensure_product(state, &context.tenant, product).await?;
    let stream = stock_stream_id(&context.tenant, warehouse, product);
    let executed = state
        .stock
        .execute(&stream, command, &context.metadata)
        .await?;
    Ok(accepted(StatusCode::CREATED, executed, context))
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
    /// RFC 3339: the levels as they stood at that instant, computed from
    /// the events recorded up to then (expiry judged on that day).
    #[param(value_type = Option<String>)]
    as_of: Option<chrono::DateTime<chrono::FixedOffset>>,
}

#[utoipa::path(get, path = "/api/integrations/inventory-levels", tag = "stock", summary = "Stock levels per warehouse and product",
    params(InventoryQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<Page<InventoryLevel>>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn inventory_levels(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<InventoryQuery>,
) -> Result<Json<Envelope<Page<InventoryLevel>>>, ApiError> {
    wait_for_position(
        &state,
        &principal,
        &headers,
        &[names::CATALOG, names::STOCK],
    )
    .await?;
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
    let tenant = principal.tenant.as_str();
    let mut items = match query.as_of {
        Some(as_of) => {
            let at = as_of.with_timezone(&chrono::Utc);
            let filter = stock::InventoryFilter {
                today: at.with_timezone(&principal.time_zone).date_naive(),
                ..filter
            };
            stock::inventory_levels_as_of(&state.db, tenant, at, &filter).await?
        }
        None => {
            let mut tx = reader(&state, &principal).await?;
            let items = stock::inventory_levels(&mut tx, tenant, &filter).await?;
            finish(tx).await?;
            items
        }
    };
    let next_cursor = next_page(&mut items, limit)
        .map(|last| format!("{}~{}", last.warehouse_id, last.product_id));
    Ok(ok(Page { items, next_cursor }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MovementQuery {
    product_id: Option<String>,
    warehouse_id: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// The movement history of one product: a page with the product it is of.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MovementPage {
    pub product_id: String,
    #[schema(inline)]
    pub items: Vec<MovementView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/integrations/product-movement-history", tag = "stock", summary = "Movements of a product, oldest first",
    params(MovementQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<MovementPage>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn movement_history(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<MovementQuery>,
) -> Result<Json<Envelope<MovementPage>>, ApiError> {
    let product_id = query
        .product_id
        .ok_or_else(|| ApiError::validation("product_id is required"))?;
    wait_for_position(&state, &principal, &headers, &[names::STOCK]).await?;
    let limit = page_size(query.limit)?;
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
    Ok(ok(MovementPage {
        product_id,
        items,
        next_cursor,
    }))
}

/// Refuses (422) a stock command for a product the tenant never
/// registered. Registration is permanent, so known products are cached.
async fn ensure_product(
    state: &AppState,
    tenant: &TenantId,
    product_id: &Id,
) -> Result<(), ApiError> {
    if product_known(state, tenant, product_id).await? {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_product",
        format!("product {product_id} is not registered"),
    ))
}
