//! Alerts (the `alerts` read model and the `Alert` aggregate): the
//! tenant's alerts, acknowledging and resolving them. The alert rules
//! (`karvon_adapters::alert_rules`) raise them.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use karvon_adapters::read_models::alerts;
use karvon_domain::alert::{AlertCommand, AlertError, AlertStatus, Severity};
use karvon_domain::ids::alert_stream_id;
use karvon_projections::alerts::AlertRow;
use karvon_projections::names;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::{ReadAccess, WriteAccess};
use super::command::{CommandAnswer, CommandContext, accepted, path_id};
use super::envelope::{CommandData, Envelope, Items, ok};
use super::error::{ApiError, CommandErrors, ErrorBody, QueryErrors};
use super::extract::{ApiQuery, JsonCommand};
use super::query::{finish, page_size, reader, wait_for_position};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_alerts))
        .routes(routes!(acknowledge_alert))
        .routes(routes!(resolve_alert))
}

impl From<AlertError> for ApiError {
    fn from(error: AlertError) -> Self {
        let message = error.to_string();
        match error {
            AlertError::NotRaised => ApiError::not_found(message),
            AlertError::Resolved => ApiError::new(StatusCode::CONFLICT, "alert_resolved", message),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertView {
    id: String,
    kind: String,
    /// `info`, `warning` or `critical`.
    #[schema(value_type = String)]
    severity: Severity,
    /// `active`, `acknowledged` or `resolved`.
    #[schema(value_type = String)]
    status: AlertStatus,
    /// What it concerns: `meter:<id>`, `product:<id>@<warehouse>`.
    subject: String,
    message: String,
    raised_at: DateTime<Utc>,
    acknowledged_at: Option<DateTime<Utc>>,
    resolved_at: Option<DateTime<Utc>>,
    occurrences: i64,
    note: Option<String>,
}

impl From<AlertRow> for AlertView {
    fn from(row: AlertRow) -> Self {
        Self {
            id: row.alert_id,
            kind: row.kind,
            severity: row.severity,
            status: row.status,
            subject: row.subject,
            message: row.message,
            raised_at: row.raised_at,
            acknowledged_at: row.acknowledged_at,
            resolved_at: row.resolved_at,
            occurrences: row.occurrences,
            note: row.note,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    /// `active`, `acknowledged` or `resolved`.
    status: Option<String>,
    kind: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", summary = "The tenant's alerts, newest first",
    params(AlertQuery),
    responses((status = 200, description = "OK", body = inline(Envelope<Items<AlertView>>)), QueryErrors),
    security(("bearer" = [])))]
pub async fn list_alerts(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<AlertQuery>,
) -> Result<Json<Envelope<Items<AlertView>>>, ApiError> {
    wait_for_position(&state, &principal, &headers, &[names::ALERTS]).await?;
    if let Some(status) = query.status.as_deref() {
        if !["active", "acknowledged", "resolved"].contains(&status) {
            return Err(ApiError::validation(format!(
                "status {status:?} is not active, acknowledged or resolved"
            )));
        }
    }
    let limit = page_size(query.limit)?;
    let mut tx = reader(&state, &principal).await?;
    let rows = alerts::list(
        &mut tx,
        principal.tenant.as_str(),
        query.status.as_deref(),
        query.kind.as_deref(),
        limit,
    )
    .await?;
    finish(tx).await?;
    Ok(ok(Items {
        items: rows.into_iter().map(AlertView::from).collect(),
    }))
}

/// Optional: an empty body is fine.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertNote {
    note: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/alerts/{id}/acknowledge", tag = "alerts", summary = "Acknowledge an alert",
    params(("id" = String, Path, description = "Alert id")),
    request_body(content = Option<AlertNote>),
    responses(
        (status = 200, description = "Acknowledged", body = inline(Envelope<CommandData>)),
        (status = 404, description = "No such alert", body = ErrorBody),
        (status = 409, description = "Resolved already", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn acknowledge_alert(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(alert_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<AlertNote>,
) -> Result<CommandAnswer, ApiError> {
    let alert_id = path_id(&alert_id)?;
    let context = CommandContext::new(
        &principal,
        &headers,
        command.fingerprint,
        alert_id.to_string(),
    )?;
    let stream = alert_stream_id(&context.tenant, &alert_id);
    let executed = state
        .alerts
        .execute(
            &stream,
            AlertCommand::Acknowledge {
                by: principal.actor.clone(),
                at: Utc::now(),
            },
            &context.metadata,
        )
        .await?;
    Ok(accepted(StatusCode::OK, executed, context))
}

#[utoipa::path(post, path = "/api/v1/alerts/{id}/resolve", tag = "alerts", summary = "Resolve an alert (the next occurrence of its cause raises it again)",
    params(("id" = String, Path, description = "Alert id")),
    request_body(content = Option<AlertNote>),
    responses(
        (status = 200, description = "Resolved", body = inline(Envelope<CommandData>)),
        (status = 404, description = "No such alert", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn resolve_alert(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(alert_id): Path<String>,
    headers: HeaderMap,
    command: JsonCommand<AlertNote>,
) -> Result<CommandAnswer, ApiError> {
    let alert_id = path_id(&alert_id)?;
    let (fingerprint, note) = (command.fingerprint, command.body.note);
    if note.as_ref().is_some_and(|note| note.chars().count() > 500) {
        return Err(ApiError::validation("note must be at most 500 characters"));
    }
    let context = CommandContext::new(&principal, &headers, fingerprint, alert_id.to_string())?;
    let stream = alert_stream_id(&context.tenant, &alert_id);
    let executed = state
        .alerts
        .execute(
            &stream,
            AlertCommand::Resolve {
                by: principal.actor.clone(),
                reason: note,
                at: Utc::now(),
            },
            &context.metadata,
        )
        .await?;
    Ok(accepted(StatusCode::OK, executed, context))
}
