//! Purchase orders: placing them, receiving goods against them (accepted
//! goods reach stock through the `receipts_stock` reactor), closing and
//! cancelling (commands on the `PurchaseOrder` aggregate); reading them and
//! supplier performance (the `procurement` read model).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};
use karvon_adapters::auth_store;
use karvon_adapters::read_models::procurement::{self as model, OrderFilter};
use karvon_domain::ids::{purchase_order_stream_id, supplier_stream_id};
use karvon_domain::purchase_order::{OrderDetails, OrderLine, PurchaseOrderCommand, ReceiptLine};
use karvon_domain::{Id, Money, Quantity};
use karvon_projections::names;
use karvon_projections::procurement::{self, LineState, PurchaseOrderRow};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::{ReadAccess, WriteAccess};
use super::command::{CommandAnswer, CommandContext, accepted, new_id, path_id};
use super::envelope::{CommandData, Envelope, Page, ok};
use super::error::{ApiError, CommandErrors, ErrorBody, QueryErrors};
use super::extract::{ApiQuery, JsonCommand};
use super::query::{finish, next_page, page_size, reader, wait_for_position};
use crate::auth::Principal;

/// The purchase-order and supplier-performance routes with their
/// documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(place_order, list_orders))
        .routes(routes!(get_order))
        .routes(routes!(receive_goods))
        .routes(routes!(close_order))
        .routes(routes!(cancel_order))
        .routes(routes!(supplier_performance))
}

/// An instant as clients send it: RFC 3339 with an offset, or a local date
/// in the tenant's time zone (the start of that day; for `expected_at`, its
/// end).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum When {
    At(DateTime<FixedOffset>),
    Day(NaiveDate),
}

impl When {
    fn start(self, zone: chrono_tz::Tz) -> DateTime<Utc> {
        match self {
            When::At(at) => at.with_timezone(&Utc),
            When::Day(day) => local_start(zone, day),
        }
    }

    fn end(self, zone: chrono_tz::Tz) -> DateTime<Utc> {
        match self {
            When::At(at) => at.with_timezone(&Utc),
            When::Day(day) => {
                local_start(zone, day + chrono::Duration::days(1)) - chrono::Duration::seconds(1)
            }
        }
    }
}

/// The first instant of a local day (after a DST gap when midnight is in
/// one).
fn local_start(zone: chrono_tz::Tz, day: NaiveDate) -> DateTime<Utc> {
    let midnight = day.and_time(NaiveTime::MIN);
    zone.from_local_datetime(&midnight)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(midnight + chrono::Duration::hours(1)))
                .earliest()
        })
        .map_or_else(|| midnight.and_utc(), |at| at.with_timezone(&Utc))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineBody {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    product_id: Id,
    #[schema(value_type = String, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "100")]
    qty: Quantity,
    #[schema(value_type = String, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "18500")]
    unit_price: Money,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    po_id: Id,
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    supplier_id: Id,
    /// RFC 3339 with an offset, or a local date.
    #[schema(value_type = String, example = "2026-03-01T09:00:00+05:00")]
    ordered_at: When,
    /// RFC 3339 with an offset, or a local date (the end of that day).
    #[schema(value_type = String, example = "2026-03-05")]
    expected_at: When,
    lines: Vec<OrderLineBody>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiptLineBody {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    product_id: Id,
    #[schema(value_type = String, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "60")]
    qty_received: Quantity,
    /// Of what was received, how much was refused (default 0).
    #[schema(value_type = Option<String>, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "2")]
    qty_rejected: Option<Money>,
    /// The price paid, when it differs from the order's.
    #[schema(value_type = Option<String>, pattern = "^[0-9]+(\\.[0-9]+)?$")]
    unit_price: Option<Money>,
    batch: Option<String>,
    expiry_date: Option<NaiveDate>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveGoods {
    /// Optional: the same receipt id again with the same lines changes
    /// nothing (with other lines: 409).
    receipt_id: Option<String>,
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    warehouse_id: Id,
    /// RFC 3339 with an offset, or a local date.
    #[schema(value_type = String, example = "2026-03-04T10:00:00+05:00")]
    received_at: When,
    lines: Vec<ReceiptLineBody>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    reason: Option<String>,
}

const IDEMPOTENCY: &str = "Makes the command safe to retry: the same key answers as the first time";

#[utoipa::path(post, path = "/api/v1/purchase-orders", tag = "procurement", summary = "Place a purchase order",
    request_body = PlaceOrder, params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY)),
    responses(
        (status = 201, description = "Placed; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        (status = 409, description = "The PO id was placed with other details", body = ErrorBody),
        (status = 422, description = "Unknown supplier", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn place_order(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<PlaceOrder>,
) -> Result<CommandAnswer, ApiError> {
    let request = command.body;
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        request.po_id.to_string(),
    )?;
    let supplier = supplier_stream_id(&context.tenant, &request.supplier_id);
    if !state.suppliers.load(&supplier).await?.is_registered() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_supplier",
            format!("supplier {} is not registered", request.supplier_id),
        ));
    }
    let zone = principal.time_zone;
    let details = OrderDetails {
        supplier_id: request.supplier_id,
        ordered_at: request.ordered_at.start(zone),
        expected_at: request.expected_at.end(zone),
        lines: request
            .lines
            .into_iter()
            .map(|line| OrderLine {
                product_id: line.product_id,
                qty: line.qty,
                unit_price: line.unit_price,
            })
            .collect(),
    };
    let stream = purchase_order_stream_id(&context.tenant, &request.po_id);
    let command = PurchaseOrderCommand::Place {
        po_id: request.po_id,
        details,
    };
    let executed = state
        .purchase_orders
        .execute(&stream, command, &context.metadata)
        .await?;
    Ok(accepted(StatusCode::CREATED, executed, context))
}

#[utoipa::path(post, path = "/api/v1/purchase-orders/{id}/receipts", tag = "procurement",
    summary = "Receive goods against a purchase order (accepted goods go into stock)",
    request_body = ReceiveGoods, params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY), ("id" = String, Path, description = "PO id")),
    responses(
        (status = 201, description = "Received; `id` is the receipt id", body = inline(Envelope<CommandData>)),
        (status = 404, description = "No such purchase order", body = ErrorBody),
        (status = 409, description = "The order is closed or cancelled, or the receipt id was used with other lines", body = ErrorBody),
        (status = 422, description = "A product not on the order, or more than ordered without over-delivery", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn receive_goods(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(po_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<ReceiveGoods>,
) -> Result<CommandAnswer, ApiError> {
    let po_id = path_id(&po_id)?;
    let request = command.body;
    let receipt_id = request.receipt_id.unwrap_or_else(new_id);
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        receipt_id.clone(),
    )?;
    let allow_over_delivery = auth_store::tenant(&state.db, context.tenant.as_str())
        .await?
        .is_some_and(|tenant| tenant.allow_over_delivery);
    let command = PurchaseOrderCommand::Receive {
        receipt_id,
        warehouse_id: request.warehouse_id,
        received_at: request.received_at.start(principal.time_zone),
        lines: request
            .lines
            .into_iter()
            .map(|line| ReceiptLine {
                product_id: line.product_id,
                qty_received: line.qty_received,
                qty_rejected: line.qty_rejected.unwrap_or(Money::ZERO),
                unit_price: line.unit_price,
                batch: line.batch,
                expiry_date: line.expiry_date,
            })
            .collect(),
        allow_over_delivery,
    };
    let stream = purchase_order_stream_id(&context.tenant, &po_id);
    let executed = state
        .purchase_orders
        .execute(&stream, command, &context.metadata)
        .await?;
    Ok(accepted(StatusCode::CREATED, executed, context))
}

#[utoipa::path(post, path = "/api/v1/purchase-orders/{id}/close", tag = "procurement", summary = "Close a purchase order (nothing more is expected)",
    request_body = Reason, params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY), ("id" = String, Path, description = "PO id")),
    responses(
        (status = 200, description = "Closed", body = inline(Envelope<CommandData>)),
        (status = 404, description = "No such purchase order", body = ErrorBody),
        (status = 409, description = "The order is cancelled", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn close_order(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(po_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<Reason>,
) -> Result<CommandAnswer, ApiError> {
    finish_order(&state, &principal, &po_id, &headers, command, |reason| {
        PurchaseOrderCommand::Close { reason }
    })
    .await
}

#[utoipa::path(post, path = "/api/v1/purchase-orders/{id}/cancel", tag = "procurement", summary = "Cancel a purchase order (only before any receipt)",
    request_body = Reason, params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY), ("id" = String, Path, description = "PO id")),
    responses(
        (status = 200, description = "Cancelled", body = inline(Envelope<CommandData>)),
        (status = 404, description = "No such purchase order", body = ErrorBody),
        (status = 409, description = "The order has receipts or is closed", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn cancel_order(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(po_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<Reason>,
) -> Result<CommandAnswer, ApiError> {
    finish_order(&state, &principal, &po_id, &headers, command, |reason| {
        PurchaseOrderCommand::Cancel { reason }
    })
    .await
}

/// Closes or cancels (`make` builds the command from the reason).
async fn finish_order(
    state: &AppState,
    principal: &Principal,
    po_id: &str,
    headers: &HeaderMap,
    command: JsonCommand<Reason>,
    make: impl FnOnce(Option<String>) -> PurchaseOrderCommand,
) -> Result<CommandAnswer, ApiError> {
    let po_id = path_id(po_id)?;
    let context = CommandContext::new(principal, headers, command.fingerprint, po_id.to_string())?;
    let stream = purchase_order_stream_id(&context.tenant, &po_id);
    let executed = state
        .purchase_orders
        .execute(&stream, make(command.body.reason), &context.metadata)
        .await?;
    Ok(accepted(StatusCode::OK, executed, context))
}

/// One receipt of a PO line.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LineReceipt {
    pub at: DateTime<Utc>,
    #[schema(value_type = String)]
    pub qty: Decimal,
}

/// A PO line and what has arrived of it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderLineView {
    pub line: u32,
    pub product_id: String,
    #[schema(value_type = String)]
    pub qty: Decimal,
    #[schema(value_type = String)]
    pub unit_price: Decimal,
    #[schema(value_type = String)]
    pub received: Decimal,
    #[schema(value_type = String)]
    pub rejected: Decimal,
    #[schema(value_type = String)]
    pub accepted: Decimal,
    /// Σ accepted × price paid.
    #[schema(value_type = String)]
    pub received_value: Decimal,
    pub receipts: Vec<LineReceipt>,
}

impl From<LineState> for OrderLineView {
    fn from(line: LineState) -> Self {
        Self {
            line: line.line,
            product_id: line.product_id,
            qty: line.qty,
            unit_price: line.unit_price,
            received: line.received,
            rejected: line.rejected,
            accepted: line.accepted,
            received_value: line.received_value,
            receipts: line
                .receipts
                .into_iter()
                .map(|(at, qty)| LineReceipt { at, qty })
                .collect(),
        }
    }
}

/// A purchase order as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OrderView {
    pub po_id: String,
    pub supplier_id: String,
    /// `open`, `closed` or `cancelled`.
    pub status: String,
    pub ordered_at: DateTime<Utc>,
    pub expected_at: DateTime<Utc>,
    pub first_receipt_at: Option<DateTime<Utc>>,
    /// Every line accepted in full.
    pub complete: bool,
    pub lines: Vec<OrderLineView>,
    pub updated_at: DateTime<Utc>,
}

impl From<PurchaseOrderRow> for OrderView {
    fn from(row: PurchaseOrderRow) -> Self {
        let complete = row.figures().complete;
        Self {
            lines: row
                .line_states()
                .into_iter()
                .map(OrderLineView::from)
                .collect(),
            po_id: row.po_id,
            supplier_id: row.supplier_id,
            status: row.status,
            ordered_at: row.ordered_at,
            expected_at: row.expected_at,
            first_receipt_at: row.first_receipt_at,
            complete,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OrderQuery {
    supplier_id: Option<String>,
    /// `open`, `closed` or `cancelled`.
    status: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/purchase-orders", tag = "procurement", summary = "The tenant's purchase orders",
    params(OrderQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<Page<OrderView>>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn list_orders(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<OrderQuery>,
) -> Result<Json<Envelope<Page<OrderView>>>, ApiError> {
    if let Some(status) = &query.status
        && !["open", "closed", "cancelled"].contains(&status.as_str())
    {
        return Err(ApiError::validation(
            "status must be open, closed or cancelled",
        ));
    }
    wait_for_position(&state, &principal, &headers, &[names::PROCUREMENT]).await?;
    let limit = page_size(query.limit)?;
    let filter = OrderFilter {
        supplier_id: query.supplier_id.as_deref(),
        status: query.status.as_deref(),
        after: query.cursor.as_deref(),
        limit: limit + 1,
    };
    let mut tx = reader(&state, &principal).await?;
    let rows = model::list_orders(&mut tx, principal.tenant.as_str(), filter).await?;
    finish(tx).await?;
    let mut items: Vec<OrderView> = rows.into_iter().map(OrderView::from).collect();
    let next_cursor = next_page(&mut items, limit).map(|last| last.po_id.clone());
    Ok(ok(Page { items, next_cursor }))
}

#[utoipa::path(get, path = "/api/v1/purchase-orders/{id}", tag = "procurement", summary = "One purchase order with its lines and receipts",
    params(("id" = String, Path, description = "PO id"), ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<OrderView>)), (status = 404, description = "Not found", body = ErrorBody), QueryErrors),
    security(("bearer" = [])))]
pub async fn get_order(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    Path(po_id): Path<String>,
) -> Result<Json<Envelope<OrderView>>, ApiError> {
    let po_id = path_id(&po_id)?;
    wait_for_position(&state, &principal, &headers, &[names::PROCUREMENT]).await?;
    let mut tx = reader(&state, &principal).await?;
    let row = model::get_order(&mut tx, principal.tenant.as_str(), po_id.as_str()).await?;
    finish(tx).await?;
    let row = row.ok_or_else(|| ApiError::not_found("purchase order not found"))?;
    Ok(ok(OrderView::from(row)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PerformanceQuery {
    /// First local date of `ordered_at` (default: a year before `date_to`).
    date_from: Option<NaiveDate>,
    /// Last local date of `ordered_at` (default: today).
    date_to: Option<NaiveDate>,
    supplier_id: Option<String>,
}

/// One supplier's performance. Rates are decimal strings with 4 decimals,
/// null when undefined (no lines, nothing received).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SupplierPerformanceView {
    pub supplier_id: String,
    /// Null when the supplier is not registered.
    pub name: Option<String>,
    pub orders: i64,
    pub lines: i64,
    #[schema(value_type = Option<String>)]
    pub on_time_rate: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    pub fill_rate: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    pub otif_rate: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    pub avg_lead_time_days: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    pub lead_time_stddev_days: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    pub rejection_rate: Option<Decimal>,
    #[schema(value_type = Option<String>)]
    pub price_variance: Option<Decimal>,
    #[schema(value_type = String)]
    pub total_received_value: Decimal,
    pub overdue_open_orders: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SupplierPerformanceAnswer {
    pub date_from: NaiveDate,
    pub date_to: NaiveDate,
    pub items: Vec<SupplierPerformanceView>,
}

#[utoipa::path(get, path = "/api/integrations/supplier-performance", tag = "procurement",
    summary = "Per supplier: on-time, fill, OTIF and rejection rates, lead time, price variance, received value, overdue orders",
    params(PerformanceQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<SupplierPerformanceAnswer>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn supplier_performance(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<PerformanceQuery>,
) -> Result<Json<Envelope<SupplierPerformanceAnswer>>, ApiError> {
    let supplier_id = query.supplier_id.as_deref().map(path_id).transpose()?;
    let today = principal.today();
    let date_to = query.date_to.unwrap_or(today);
    let date_from = query
        .date_from
        .unwrap_or_else(|| date_to - chrono::Duration::days(365));
    if date_from > date_to {
        return Err(ApiError::validation("date_from must not be after date_to"));
    }
    wait_for_position(&state, &principal, &headers, &[names::PROCUREMENT]).await?;
    let zone = principal.time_zone;
    let from = local_start(zone, date_from);
    let to = local_start(zone, date_to + chrono::Duration::days(1));
    // Overdue as of now, or as of the end of `date_to` when that is past.
    let overdue_before = to.min(Utc::now());
    let tenant = principal.tenant.as_str();
    let mut tx = reader(&state, &principal).await?;
    let orders = model::order_summaries(
        &mut tx,
        tenant,
        from,
        to,
        supplier_id.as_ref().map(Id::as_str),
    )
    .await?;
    let figures = procurement::performance(&orders, overdue_before);
    let ids: Vec<&str> = figures.iter().map(|row| row.supplier_id.as_str()).collect();
    let suppliers = model::suppliers(&mut tx, tenant, &ids).await?;
    finish(tx).await?;
    let items = figures
        .into_iter()
        .map(|row| SupplierPerformanceView {
            name: suppliers
                .iter()
                .find(|supplier| supplier.supplier_id == row.supplier_id)
                .map(|supplier| supplier.name.clone()),
            supplier_id: row.supplier_id,
            orders: row.orders,
            lines: row.lines,
            on_time_rate: row.on_time_rate,
            fill_rate: row.fill_rate,
            otif_rate: row.otif_rate,
            avg_lead_time_days: row.avg_lead_time_days,
            lead_time_stddev_days: row.lead_time_stddev_days,
            rejection_rate: row.rejection_rate,
            price_variance: row.price_variance,
            total_received_value: row.total_received_value,
            overdue_open_orders: row.overdue_open_orders,
        })
        .collect();
    Ok(ok(SupplierPerformanceAnswer {
        date_from,
        date_to,
        items,
    }))
}
