//! Sales: recording a sale that happened at a branch, and refunding it
//! (commands on the `Sale` aggregate). Stock follows through the
//! `sales_stock` reactor.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, FixedOffset, Utc};
use karvon_domain::ids::sale_stream_id;
use karvon_domain::sale::{
    PaymentType, RefundRequest, SaleCommand, SaleDetails, SaleLine, SaleType,
};
use karvon_domain::{Id, Money, Quantity};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::WriteAccess;
use super::command::{CommandAnswer, CommandContext, accepted, new_id, path_id, product_known};
use super::envelope::{CommandData, Envelope};
use super::error::{ApiError, CommandErrors, ErrorBody};
use super::extract::JsonCommand;

/// The sales routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(record_sale))
        .routes(routes!(refund_sale))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SaleLineBody {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    product_id: Id,
    #[schema(value_type = String, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "2")]
    qty: Quantity,
    #[schema(value_type = String, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "12500")]
    unit_price: Money,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordSale {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    sale_id: Id,
    /// The branch; its stock is the warehouse of the same id.
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    branch_id: Id,
    cashier: String,
    #[schema(value_type = Option<String>, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    customer_id: Option<Id>,
    /// `retail` or `wholesale`.
    #[schema(value_type = String)]
    sale_type: SaleType,
    /// `cash`, `card` or `transfer`.
    #[schema(value_type = String)]
    payment_type: PaymentType,
    /// RFC 3339 with an offset (`2026-11-25T23:30:00+05:00`).
    occurred_at: DateTime<FixedOffset>,
    lines: Vec<SaleLineBody>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundLineBody {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    product_id: Id,
    #[schema(value_type = String, pattern = "^[0-9]+(\\.[0-9]+)?$", example = "1")]
    qty: Quantity,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundSale {
    /// RFC 3339 with an offset.
    occurred_at: DateTime<FixedOffset>,
    reason: String,
    /// Without lines: everything not yet refunded.
    lines: Option<Vec<RefundLineBody>>,
}

#[utoipa::path(post, path = "/api/v1/sales", tag = "sales", summary = "Record a sale that happened",
    request_body = RecordSale, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time")),
    responses(
        (status = 201, description = "Recorded; stock follows. `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        (status = 409, description = "The sale id was recorded with other details", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn record_sale(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<RecordSale>,
) -> Result<CommandAnswer, ApiError> {
    let request = command.body;
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        request.sale_id.to_string(),
    )?;
    // A sale is a fact: it is recorded even for products the catalogue
    // does not know yet, and says which.
    let mut unknown_products: Vec<Id> = Vec::new();
    for line in &request.lines {
        if !unknown_products.contains(&line.product_id)
            && !product_known(&state, &context.tenant, &line.product_id).await?
        {
            unknown_products.push(line.product_id.clone());
        }
    }
    let details = SaleDetails {
        branch_id: request.branch_id,
        cashier: request.cashier,
        customer_id: request.customer_id,
        sale_type: request.sale_type,
        payment_type: request.payment_type,
        occurred_at: request.occurred_at.with_timezone(&Utc),
        lines: request
            .lines
            .into_iter()
            .map(|line| SaleLine {
                product_id: line.product_id,
                qty: line.qty,
                unit_price: line.unit_price,
            })
            .collect(),
    };
    let stream = sale_stream_id(&context.tenant, &request.sale_id);
    let executed = state
        .sales
        .execute(
            &stream,
            SaleCommand::Record {
                sale_id: request.sale_id,
                details,
                unknown_products,
            },
            &context.metadata,
        )
        .await?;
    Ok(accepted(StatusCode::CREATED, executed, context))
}

#[utoipa::path(post, path = "/api/v1/sales/{id}/refund", tag = "sales", summary = "Refund a sale, whole or per product",
    request_body = RefundSale, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time"), ("id" = String, Path, description = "Sale id")),
    responses(
        (status = 201, description = "Refunded; the goods go back to the branch's stock", body = inline(Envelope<CommandData>)),
        (status = 404, description = "No such sale", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn refund_sale(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(sale_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<RefundSale>,
) -> Result<CommandAnswer, ApiError> {
    let sale_id = path_id(&sale_id)?;
    let request = command.body;
    let refund_id = new_id();
    let context =
        CommandContext::new(&principal, &headers, command.fingerprint, refund_id.clone())?;
    let stream = sale_stream_id(&context.tenant, &sale_id);
    let executed = state
        .sales
        .execute(
            &stream,
            SaleCommand::Refund {
                refund_id,
                occurred_at: request.occurred_at.with_timezone(&Utc),
                reason: request.reason,
                lines: request.lines.map(|lines| {
                    lines
                        .into_iter()
                        .map(|line| RefundRequest {
                            product_id: line.product_id,
                            qty: line.qty,
                        })
                        .collect()
                }),
            },
            &context.metadata,
        )
        .await?;
    Ok(accepted(StatusCode::CREATED, executed, context))
}
