//! The audit trail (scope `admin`, confined to the caller's tenant): one
//! stream's events in order, and the tenant's events in feed order, each
//! with its metadata — "why is this number what it is".

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use karvon_adapters::audit;
use karvon_adapters::feed::FeedEvent;
use karvon_projections::Position;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::AdminAccess;
use super::envelope::{Envelope, Page, ok};
use super::error::{ApiError, ErrorBody, QueryErrors};
use super::extract::ApiQuery;
use super::query::page_size;

/// The audit routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stream_events))
        .routes(routes!(tenant_events))
}

/// One event as recorded.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    pub event_id: String,
    pub aggregate_type: String,
    /// Without the tenant prefix (`W1/P1` for a stock item).
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    /// The event's place in the feed (`<transaction>.<global>`).
    pub position: String,
    pub recorded_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// Tenant, occurrence time, source, actor, correlation and causation
    /// ids, idempotency key.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

impl AuditEvent {
    fn from_feed(event: FeedEvent, tenant: &str) -> Self {
        let prefix = format!("{tenant}/");
        let aggregate_id = event
            .aggregate_id
            .strip_prefix(&prefix)
            .unwrap_or(&event.aggregate_id)
            .to_string();
        let metadata = &event.metadata;
        Self {
            event_id: event.event_id.to_string(),
            aggregate_type: event.aggregate_type,
            aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_version: event.event_version,
            position: event.position.to_string(),
            recorded_at: event.recorded_at,
            data: event.payload,
            metadata: serde_json::json!({
                "tenant_id": metadata.tenant_id,
                "occurred_at": metadata.occurred_at,
                "source": metadata.source,
                "actor": metadata.actor,
                "correlation_id": metadata.correlation_id,
                "causation_id": metadata.causation_id,
                "idempotency_key": metadata.idempotency_key,
            }),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// At most this many events (default 100, at most 1000).
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/audit/streams/{aggregate_type}/{aggregate_id}", tag = "audit",
    summary = "One stream's events with their metadata, oldest first",
    params(("aggregate_type" = String, Path, description = "Product, StockItem, Sale, Customer, Supplier, PurchaseOrder"),
           ("aggregate_id" = String, Path, description = "The id without the tenant (a stock item is `<warehouse>/<product>`, sent as `W1%2FP1`)"),
           StreamQuery),
    responses((status = 200, description = "OK", body = inline(Envelope<Page<AuditEvent>>)), (status = 404, description = "No such stream", body = ErrorBody), QueryErrors),
    security(("bearer" = [])))]
pub async fn stream_events(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    ApiQuery(query): ApiQuery<StreamQuery>,
) -> Result<Json<Envelope<Page<AuditEvent>>>, ApiError> {
    let limit = page_size(query.limit)?;
    let tenant = principal.tenant.as_str();
    let stream = format!("{tenant}/{aggregate_id}");
    let events = audit::stream(&state.db, &aggregate_type, &stream, limit).await?;
    if events.is_empty() {
        return Err(ApiError::not_found("no such stream"));
    }
    let items = events
        .into_iter()
        .filter(|event| event.metadata.tenant_id == tenant)
        .map(|event| AuditEvent::from_feed(event, tenant))
        .collect();
    Ok(ok(Page {
        items,
        next_cursor: None,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// The `position` of the last event seen (`next_cursor` of the
    /// previous page); from the start when absent.
    after: Option<String>,
    /// At most this many events (default 100, at most 1000).
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/audit/events", tag = "audit",
    summary = "The tenant's events in feed order, paged",
    params(FeedQuery),
    responses((status = 200, description = "OK", body = inline(Envelope<Page<AuditEvent>>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn tenant_events(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
    ApiQuery(query): ApiQuery<FeedQuery>,
) -> Result<Json<Envelope<Page<AuditEvent>>>, ApiError> {
    let limit = page_size(query.limit)?;
    let after = match query.after.as_deref() {
        None => Position::START,
        Some(after) => after
            .parse()
            .map_err(|_| ApiError::validation("after: expected a position from a previous page"))?,
    };
    let tenant = principal.tenant.as_str();
    let events = audit::tenant_feed(&state.db, tenant, after, limit).await?;
    let next_cursor = (events.len() as i64 == limit)
        .then(|| events.last().map(|event| event.position.to_string()))
        .flatten();
    let items = events
        .into_iter()
        .map(|event| AuditEvent::from_feed(event, tenant))
        .collect();
    Ok(ok(Page { items, next_cursor }))
}
