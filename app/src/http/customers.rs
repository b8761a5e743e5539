//! Customers: registering and updating them (the `Customer` aggregate),
//! reading them, and their purchase history (the `customers` read model).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use karvon_adapters::read_models::customers;
use karvon_domain::Id;
use karvon_domain::contact::ContactDetails;
use karvon_domain::customer::{CustomerCommand, CustomerDetails};
use karvon_domain::ids::customer_stream_id;
use karvon_projections::customers::{CustomerRow, PurchaseRow};
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

/// The customer routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_customer, list_customers))
        .routes(routes!(update_customer, get_customer))
        .routes(routes!(purchase_history))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterCustomer {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    customer_id: Id,
    name: String,
    phone: Option<String>,
    email: Option<String>,
    tax_id: Option<String>,
    address: Option<String>,
}

/// A party's details as `PUT` replaces them (customers and suppliers).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactBody {
    name: String,
    phone: Option<String>,
    email: Option<String>,
    tax_id: Option<String>,
    address: Option<String>,
}

impl From<ContactBody> for ContactDetails {
    fn from(body: ContactBody) -> Self {
        Self {
            name: body.name,
            phone: body.phone,
            email: body.email,
            tax_id: body.tax_id,
            address: body.address,
        }
    }
}

#[utoipa::path(post, path = "/api/v1/customers", tag = "customers", summary = "Register a customer",
    request_body = RegisterCustomer, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time")),
    responses(
        (status = 201, description = "Registered; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        (status = 409, description = "Exists with other details", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn register_customer(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<RegisterCustomer>,
) -> Result<CommandAnswer, ApiError> {
    let request = command.body;
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        request.customer_id.to_string(),
    )?;
    let details = CustomerDetails {
        name: request.name,
        phone: request.phone,
        email: request.email,
        tax_id: request.tax_id,
        address: request.address,
    };
    let stream = customer_stream_id(&context.tenant, &request.customer_id);
    let executed = state
        .customers
        .execute(
            &stream,
            CustomerCommand::Register {
                customer_id: request.customer_id,
                details,
            },
            &context.metadata,
        )
        .await?;
    Ok(accepted(StatusCode::CREATED, executed, context))
}

#[utoipa::path(put, path = "/api/v1/customers/{id}", tag = "customers", summary = "Replace a customer's details",
    request_body = ContactBody, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time"), ("id" = String, Path, description = "Customer id")),
    responses(
        (status = 200, description = "Updated; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        (status = 404, description = "No such customer", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn update_customer(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(customer_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<ContactBody>,
) -> Result<CommandAnswer, ApiError> {
    let customer_id = path_id(&customer_id)?;
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        customer_id.to_string(),
    )?;
    let details = command.body.into();
    let stream = customer_stream_id(&context.tenant, &customer_id);
    let executed = state
        .customers
        .execute(
            &stream,
            CustomerCommand::Update { details },
            &context.metadata,
        )
        .await?;
    Ok(accepted(StatusCode::OK, executed, context))
}

/// A customer as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    pub customer_id: String,
    pub name: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub tax_id: Option<String>,
    pub address: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<CustomerRow> for CustomerView {
    fn from(row: CustomerRow) -> Self {
        Self {
            customer_id: row.customer_id,
            name: row.name,
            phone: row.phone,
            email: row.email,
            tax_id: row.tax_id,
            address: row.address,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CustomerQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/customers", tag = "customers", summary = "The tenant's customers",
    params(CustomerQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<Page<CustomerView>>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn list_customers(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<CustomerQuery>,
) -> Result<Json<Envelope<Page<CustomerView>>>, ApiError> {
    wait_for_position(&state, &principal, &headers, &[names::CUSTOMERS]).await?;
    let limit = page_size(query.limit)?;
    let mut tx = reader(&state, &principal).await?;
    let rows = customers::list_customers(
        &mut tx,
        principal.tenant.as_str(),
        query.cursor.as_deref(),
        limit + 1,
    )
    .await?;
    finish(tx).await?;
    let mut items: Vec<CustomerView> = rows.into_iter().map(CustomerView::from).collect();
    let next_cursor = next_page(&mut items, limit).map(|last| last.customer_id.clone());
    Ok(ok(Page { items, next_cursor }))
}

#[utoipa::path(get, path = "/api/v1/customers/{id}", tag = "customers", summary = "One customer",
    params(("id" = String, Path, description = "Customer id"), ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<CustomerView>)), (status = 404, description = "Not found", body = ErrorBody), QueryErrors),
    security(("bearer" = [])))]
pub async fn get_customer(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    Path(customer_id): Path<String>,
) -> Result<Json<Envelope<CustomerView>>, ApiError> {
    let customer_id = path_id(&customer_id)?;
    wait_for_position(&state, &principal, &headers, &[names::CUSTOMERS]).await?;
    let mut tx = reader(&state, &principal).await?;
    let row =
        customers::get_customer(&mut tx, principal.tenant.as_str(), customer_id.as_str()).await?;
    finish(tx).await?;
    let row = row.ok_or_else(|| ApiError::not_found("customer not found"))?;
    Ok(ok(CustomerView::from(row)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    customer_id: Option<String>,
}

/// One sale of a customer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Purchase {
    pub sale_id: String,
    pub at: DateTime<Utc>,
    pub branch_id: String,
    #[schema(value_type = String)]
    pub total: Decimal,
    #[schema(value_type = String)]
    pub refunded_amount: Decimal,
    /// `[{product_id, qty, unit_price}]` as sold.
    #[schema(value_type = Vec<Object>)]
    pub lines: serde_json::Value,
}

impl From<PurchaseRow> for Purchase {
    fn from(row: PurchaseRow) -> Self {
        Self {
            sale_id: row.sale_id,
            at: row.at,
            branch_id: row.branch_id,
            total: row.total,
            refunded_amount: row.refunded_amount,
            lines: row.lines,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PurchaseHistory {
    pub customer_id: String,
    /// Null when the customer is not registered (sales may name one first).
    pub name: Option<String>,
    /// Net of refunds.
    #[schema(value_type = String)]
    pub total_spent: Decimal,
    pub sales_count: i64,
    /// Newest first.
    pub sales: Vec<Purchase>,
}

#[utoipa::path(get, path = "/api/integrations/customer-purchase-history", tag = "customers",
    summary = "A customer's purchases, net total and count",
    params(HistoryQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<PurchaseHistory>)), (status = 404, description = "No such customer and no sales naming it", body = ErrorBody), QueryErrors),
    security(("bearer" = [])))]
pub async fn purchase_history(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Envelope<PurchaseHistory>>, ApiError> {
    let customer_id = query
        .customer_id
        .ok_or_else(|| ApiError::validation("customer_id is required"))?;
    let customer_id = path_id(&customer_id)?;
    wait_for_position(&state, &principal, &headers, &[names::CUSTOMERS]).await?;
    let tenant = principal.tenant.as_str();
    let mut tx = reader(&state, &principal).await?;
    let customer = customers::get_customer(&mut tx, tenant, customer_id.as_str()).await?;
    let sales = customers::purchases(&mut tx, tenant, customer_id.as_str()).await?;
    finish(tx).await?;
    if customer.is_none() && sales.is_empty() {
        return Err(ApiError::not_found("customer not found"));
    }
    let total_spent = sales
        .iter()
        .map(|sale| sale.total - sale.refunded_amount)
        .sum();
    Ok(ok(PurchaseHistory {
        customer_id: customer_id.to_string(),
        name: customer.map(|customer| customer.name),
        total_spent,
        sales_count: sales.len() as i64,
        sales: sales.into_iter().map(Purchase::from).collect(),
    }))
}
