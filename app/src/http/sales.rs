//! Sales: recording a sale that happened at a branch, and refunding it
//! (commands on the `Sale` aggregate; stock follows through the
//! `sales_stock` reactor), and sales per period (the `sales` read model).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use karvon_adapters::read_models::sales::{self as sales_model, Buckets};
use karvon_domain::ids::sale_stream_id;
use karvon_domain::sale::{
    PaymentType, RefundRequest, SaleCommand, SaleDetails, SaleLine, SaleType,
};
use karvon_domain::{Id, Money, Quantity};
use karvon_projections::names;
use karvon_projections::sales::{self, Totals};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::{ReadAccess, WriteAccess};
use super::command::{CommandAnswer, CommandContext, accepted, new_id, path_id, product_known};
use super::envelope::{CommandData, Envelope, ok};
use super::error::{ApiError, CommandErrors, ErrorBody, QueryErrors};
use super::extract::{ApiQuery, JsonCommand};
use super::query::{finish, reader, wait_for_position};

/// The sales routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(record_sale))
        .routes(routes!(refund_sale))
        .routes(routes!(real_time_sales))
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
    let fingerprint = command.fingerprint;
    record(&state, command.body, |id| {
        CommandContext::new(&principal, &headers, fingerprint, id)
    })
    .await
}

/// Records a sale (`POST /sales`, and `order_created` webhooks); `context`
/// makes the metadata given the id the command answers.
pub(super) async fn record(
    state: &AppState,
    request: RecordSale,
    context: impl FnOnce(String) -> Result<CommandContext, ApiError>,
) -> Result<CommandAnswer, ApiError> {
    let context = context(request.sale_id.to_string())?;
    // A sale is a fact: it is recorded even for products the catalogue
    // does not know yet, and says which.
    let mut unknown_products: Vec<Id> = Vec::new();
    for line in &request.lines {
        if !unknown_products.contains(&line.product_id)
            && !product_known(state, &context.tenant, &line.product_id).await?
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SalesQuery {
    /// `daily`, `weekly` (ISO weeks from Monday), `monthly` or `yearly`.
    period: Option<String>,
    /// First local date (default: a year before `date_to`).
    date_from: Option<NaiveDate>,
    /// Last local date (default: today in the tenant's zone).
    date_to: Option<NaiveDate>,
    branch_id: Option<String>,
    /// RFC 3339: the answer as it stood at that instant, computed from the
    /// sale events recorded up to then.
    #[param(value_type = Option<String>)]
    as_of: Option<DateTime<FixedOffset>>,
}

/// Totals of one bucket, branch or cashier.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SalesTotals {
    #[schema(value_type = String)]
    pub total_amount: Decimal,
    #[schema(value_type = String)]
    pub retail_amount: Decimal,
    #[schema(value_type = String)]
    pub wholesale_amount: Decimal,
    #[schema(value_type = String)]
    pub refunds_amount: Decimal,
    #[schema(value_type = String)]
    pub net_amount: Decimal,
    pub sales_count: i64,
    #[schema(value_type = String)]
    pub items_sold: Decimal,
}

impl From<&Totals> for SalesTotals {
    fn from(totals: &Totals) -> Self {
        Self {
            total_amount: totals.total_amount,
            retail_amount: totals.retail_amount,
            wholesale_amount: totals.wholesale_amount,
            refunds_amount: totals.refunds_amount,
            net_amount: totals.net_amount(),
            sales_count: totals.sales_count,
            items_sold: totals.items_sold,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SalesBucket {
    /// The period's first local date.
    pub period_start: NaiveDate,
    #[serde(flatten)]
    pub totals: SalesTotals,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BranchSales {
    pub branch_id: String,
    #[serde(flatten)]
    pub totals: SalesTotals,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CashierSales {
    pub cashier: String,
    #[serde(flatten)]
    pub totals: SalesTotals,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RealTimeSales {
    pub period: String,
    pub date_from: NaiveDate,
    pub date_to: NaiveDate,
    /// Oldest first; periods without sales or refunds are left out.
    pub buckets: Vec<SalesBucket>,
    /// One row per branch over the whole range.
    pub by_branch: Vec<BranchSales>,
    /// One row per cashier over the whole range.
    pub by_cashier: Vec<CashierSales>,
}

#[utoipa::path(get, path = "/api/integrations/real-time-sales", tag = "sales",
    summary = "Sales per period in the tenant's time zone, with totals per branch and cashier",
    params(SalesQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<RealTimeSales>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn real_time_sales(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<SalesQuery>,
) -> Result<Json<Envelope<RealTimeSales>>, ApiError> {
    let period = query.period.unwrap_or_else(|| "daily".to_string());
    if !sales::PERIODS.contains(&period.as_str()) {
        return Err(ApiError::validation(
            "period must be daily, weekly, monthly or yearly",
        ));
    }
    let date_to = query.date_to.unwrap_or_else(|| principal.today());
    let date_from = query
        .date_from
        .unwrap_or_else(|| date_to - chrono::Duration::days(365));
    if date_from > date_to {
        return Err(ApiError::validation("date_from must not be after date_to"));
    }
    if (date_to - date_from).num_days() > 3660 {
        return Err(ApiError::validation("the range must be at most ten years"));
    }
    let branch = query.branch_id.as_deref();
    wait_for_position(&state, &principal, &headers, &[names::SALES]).await?;
    let tenant = principal.tenant.as_str();
    let first = sales::period_start(&period, date_from);
    let folded;
    let mut tx = None;
    let mut source = match query.as_of {
        Some(as_of) => {
            let at = as_of.with_timezone(&Utc);
            folded = sales_model::buckets_as_of(&state.db, tenant, principal.time_zone, at).await?;
            Buckets::AsOf(&folded)
        }
        None => Buckets::Stored(tx.insert(reader(&state, &principal).await?)),
    };
    let rows = sales_model::buckets(&mut source, tenant, &period, first, date_to, branch).await?;
    let per_branch =
        sales_model::daily(&mut source, tenant, "branch", date_from, date_to, branch).await?;
    let per_cashier =
        sales_model::daily(&mut source, tenant, "cashier", date_from, date_to, branch).await?;
    if let Some(tx) = tx {
        finish(tx).await?;
    }
    let sum = |rows: Vec<(String, Totals)>| {
        let mut sums: BTreeMap<String, Totals> = BTreeMap::new();
        for (key, totals) in rows {
            sums.entry(key).or_default().add(&totals);
        }
        sums
    };
    let by_branch = sum(per_branch
        .iter()
        .map(|row| (row.branch_id.clone(), row.totals()))
        .collect())
    .iter()
    .map(|(branch_id, totals)| BranchSales {
        branch_id: branch_id.clone(),
        totals: totals.into(),
    })
    .collect();
    let by_cashier = sum(per_cashier
        .iter()
        .map(|row| (row.cashier.clone(), row.totals()))
        .collect())
    .iter()
    .map(|(cashier, totals)| CashierSales {
        cashier: cashier.clone(),
        totals: totals.into(),
    })
    .collect();
    Ok(ok(RealTimeSales {
        period,
        date_from,
        date_to,
        buckets: rows
            .iter()
            .map(|row| SalesBucket {
                period_start: row.period_start,
                totals: (&row.totals()).into(),
            })
            .collect(),
        by_branch,
        by_cashier,
    }))
}
