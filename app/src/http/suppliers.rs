//! Suppliers: registering and updating them (the `Supplier` aggregate) and
//! reading them (the `procurement` read model). Purchase orders name one.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use karvon_adapters::read_models::procurement;
use karvon_domain::Id;
use karvon_domain::contact::ContactDetails;
use karvon_domain::ids::supplier_stream_id;
use karvon_domain::supplier::SupplierCommand;
use karvon_projections::names;
use karvon_projections::procurement::SupplierRow;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::{ReadAccess, WriteAccess};
use super::command::{CommandAnswer, CommandContext, accepted, path_id};
use super::customers::ContactBody;
use super::envelope::{CommandData, Envelope, Page, ok};
use super::error::{ApiError, CommandErrors, ErrorBody, QueryErrors};
use super::extract::{ApiQuery, JsonCommand};
use super::query::{finish, next_page, page_size, reader, wait_for_position};

/// The supplier routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_supplier, list_suppliers))
        .routes(routes!(update_supplier, get_supplier))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterSupplier {
    #[schema(value_type = String, pattern = "^[A-Za-z0-9._:-]{1,64}$")]
    supplier_id: Id,
    name: String,
    phone: Option<String>,
    email: Option<String>,
    tax_id: Option<String>,
    address: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/suppliers", tag = "procurement", summary = "Register a supplier",
    request_body = RegisterSupplier, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time")),
    responses(
        (status = 201, description = "Registered; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        (status = 409, description = "Exists with other details", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn register_supplier(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    headers: HeaderMap,
    command: JsonCommand<RegisterSupplier>,
) -> Result<CommandAnswer, ApiError> {
    let request = command.body;
    let supplier_id = request.supplier_id;
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        supplier_id.to_string(),
    )?;
    let details = ContactDetails {
        name: request.name,
        phone: request.phone,
        email: request.email,
        tax_id: request.tax_id,
        address: request.address,
    };
    let stream = supplier_stream_id(&context.tenant, &supplier_id);
    let command = SupplierCommand::Register {
        supplier_id,
        details,
    };
    let executed = state
        .suppliers
        .execute(&stream, command, &context.metadata)
        .await?;
    Ok(accepted(StatusCode::CREATED, executed, context))
}

#[utoipa::path(put, path = "/api/v1/suppliers/{id}", tag = "procurement", summary = "Replace a supplier's details",
    request_body = ContactBody, params(("Idempotency-Key" = Option<String>, Header, description = "Makes the command safe to retry: the same key answers as the first time"), ("id" = String, Path, description = "Supplier id")),
    responses(
        (status = 200, description = "Updated; `position` is a read-your-writes token", body = inline(Envelope<CommandData>)),
        (status = 404, description = "No such supplier", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn update_supplier(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(supplier_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<ContactBody>,
) -> Result<CommandAnswer, ApiError> {
    let supplier_id = path_id(&supplier_id)?;
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        supplier_id.to_string(),
    )?;
    let stream = supplier_stream_id(&context.tenant, &supplier_id);
    let command = SupplierCommand::Update {
        details: command.body.into(),
    };
    let executed = state
        .suppliers
        .execute(&stream, command, &context.metadata)
        .await?;
    Ok(accepted(StatusCode::OK, executed, context))
}

/// A supplier as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SupplierView {
    pub supplier_id: String,
    pub name: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub tax_id: Option<String>,
    pub address: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<SupplierRow> for SupplierView {
    fn from(row: SupplierRow) -> Self {
        Self {
            supplier_id: row.supplier_id,
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
pub struct SupplierQuery {
    limit: Option<i64>,
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/suppliers", tag = "procurement", summary = "The tenant's suppliers",
    params(SupplierQuery, ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<Page<SupplierView>>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn list_suppliers(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<SupplierQuery>,
) -> Result<Json<Envelope<Page<SupplierView>>>, ApiError> {
    wait_for_position(&state, &principal, &headers, &[names::PROCUREMENT]).await?;
    let limit = page_size(query.limit)?;
    let mut tx = reader(&state, &principal).await?;
    let tenant = principal.tenant.as_str();
    let rows =
        procurement::list_suppliers(&mut tx, tenant, query.cursor.as_deref(), limit + 1).await?;
    finish(tx).await?;
    let mut items: Vec<SupplierView> = rows.into_iter().map(SupplierView::from).collect();
    let next_cursor = next_page(&mut items, limit).map(|last| last.supplier_id.clone());
    Ok(ok(Page { items, next_cursor }))
}

#[utoipa::path(get, path = "/api/v1/suppliers/{id}", tag = "procurement", summary = "One supplier",
    params(("id" = String, Path, description = "Supplier id"), ("X-Min-Position" = Option<String>, Header, description = "Wait until the read model includes this command position")),
    responses((status = 200, description = "OK", body = inline(Envelope<SupplierView>)), (status = 404, description = "Not found", body = ErrorBody), QueryErrors),
    security(("bearer" = [])))]
pub async fn get_supplier(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    Path(supplier_id): Path<String>,
) -> Result<Json<Envelope<SupplierView>>, ApiError> {
    let supplier_id = path_id(&supplier_id)?;
    wait_for_position(&state, &principal, &headers, &[names::PROCUREMENT]).await?;
    let mut tx = reader(&state, &principal).await?;
    let tenant = principal.tenant.as_str();
    let row = procurement::get_supplier(&mut tx, tenant, supplier_id.as_str()).await?;
    finish(tx).await?;
    let row = row.ok_or_else(|| ApiError::not_found("supplier not found"))?;
    Ok(ok(SupplierView::from(row)))
}
