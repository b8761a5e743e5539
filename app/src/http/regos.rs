//! REGOS (SPEC §3 "Integrations", REGOS): a manual sales sync of a date
//! window, run as an import job (the daily one is started by the
//! workers), and REGOS's `HandleWebhook` calls: `connected_integration_id`
//! must be the integration's, `event_id` de-duplicates, and a
//! `DocChequeClosed` fetches and records that cheque in the background
//! (REGOS waits 30 s at most).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::NaiveDate;
use karvon_adapters::integrations as registry;
use karvon_domain::import_job::{ImportKind, ImportSource};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::access::{Peer, WriteAccess};
use super::envelope::{Envelope, ok};
use super::error::{ApiError, CommandErrors, ErrorBody};
use super::imports::{Accepted, queued, start};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sync_sales))
        .routes(routes!(regos_webhook))
}

/// Local dates in the tenant's zone; default yesterday and today.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncWindow {
    #[schema(value_type = Option<String>, format = Date)]
    date_from: Option<NaiveDate>,
    #[schema(value_type = Option<String>, format = Date)]
    date_to: Option<NaiveDate>,
}

#[utoipa::path(post, path = "/api/v1/integration/regos/sync/{integration_id}/", tag = "imports",
    summary = "Sync the sales of a window from REGOS in the background",
    params(("integration_id" = String, Path, description = "A `regos` integration")),
    request_body(content = Option<SyncWindow>, description = "Optional window (local dates)"),
    responses(
        (status = 202, description = "Started, or the running sync of this integration", body = inline(Envelope<super::imports::TaskStarted>)),
        (status = 404, description = "No such REGOS integration", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn sync_sales(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(integration_id): Path<String>,
    body: Bytes,
) -> Result<Accepted, ApiError> {
    let window: SyncWindow = if body.iter().all(u8::is_ascii_whitespace) {
        SyncWindow::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::validation(format!("invalid body: {error}")))?
    };
    if let (Some(from), Some(to)) = (window.date_from, window.date_to) {
        if from > to {
            return Err(ApiError::validation("date_from is after date_to"));
        }
        if (to - from).num_days() > 366 {
            return Err(ApiError::validation("a window spans at most 366 days"));
        }
    }
    let missing = || ApiError::not_found(format!("no REGOS integration {integration_id}"));
    let id = Uuid::parse_str(&integration_id).map_err(|_| missing())?;
    let view = registry::view(&state.db, principal.tenant.as_str(), id)
        .await?
        .filter(|view| view.kind == "regos")
        .ok_or_else(missing)?;
    let mut job = queued(
        &principal,
        Some(view.id),
        ImportKind::Sales,
        ImportSource::Regos,
        None,
    );
    let mut params = serde_json::Map::new();
    if let Some(from) = window.date_from {
        params.insert("date_from".into(), from.to_string().into());
    }
    if let Some(to) = window.date_to {
        params.insert("date_to".into(), to.to_string().into());
    }
    job.params = Some(Value::Object(params).to_string());
    start(&state, job).await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookAck {
    /// True when this `event_id` was already handled.
    duplicate: bool,
}

#[utoipa::path(post, path = "/api/v1/integration/regos/webhook/{integration_id}/", tag = "imports",
    summary = "REGOS HandleWebhook (DocChequeClosed records the cheque's sale)",
    params(("integration_id" = String, Path, description = "A `regos` integration")),
    request_body(content = Object, description = "`{action, event_id, occurred_at, connected_integration_id, data:{action, data}}`"),
    responses(
        (status = 200, description = "Acknowledged (the cheque is fetched in the background)", body = inline(Envelope<WebhookAck>)),
        (status = 400, description = "Not a HandleWebhook envelope", body = ErrorBody),
        (status = 401, description = "Wrong connected_integration_id", body = ErrorBody),
        (status = 404, description = "No such REGOS integration", body = ErrorBody),
        (status = 429, description = "Too many wrong connected_integration_id from this address", body = ErrorBody)))]
pub async fn regos_webhook(
    State(state): State<AppState>,
    Peer(peer): Peer,
    Path(integration_id): Path<String>,
    body: Bytes,
) -> Result<Json<Envelope<WebhookAck>>, ApiError> {
    // A peer guessing connected_integration_id is throttled like failed
    // logins: over its limit it is refused before anything is read.
    state.auth.refuse_failing_peer(&peer)?;
    let missing = || ApiError::not_found(format!("no REGOS integration {integration_id}"));
    let id = Uuid::parse_str(&integration_id).map_err(|_| missing())?;
    let integration = registry::get(&state.db, id)
        .await?
        .filter(|integration| integration.kind == "regos")
        .ok_or_else(missing)?;
    let envelope: Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::validation(format!("invalid body: {error}")))?;
    let expected = integration.settings["connected_integration_id"]
        .as_str()
        .unwrap_or_default();
    let given = envelope["connected_integration_id"]
        .as_str()
        .unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        state.auth.count_failed_attempt(&peer)?;
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "connected_integration_id does not match the integration",
        ));
    }
    let event_id = envelope["event_id"]
        .as_str()
        .filter(|id| !id.is_empty() && id.len() <= 128)
        .ok_or_else(|| ApiError::validation("event_id is required"))?;
    if registry::delivery_seen(&state.db, id, event_id).await? {
        return Ok(ok(WebhookAck { duplicate: true }));
    }
    let cheque = match envelope["data"]["action"].as_str() {
        Some("DocChequeClosed") => Some(
            envelope["data"]["data"]["uuid"]
                .as_str()
                .filter(|uuid| !uuid.is_empty())
                .ok_or_else(|| ApiError::validation("data.data.uuid is required"))?
                .to_string(),
        ),
        _ => None,
    };
    registry::record_delivery(&state.db, id, event_id).await?;
    if let Some(uuid) = cheque {
        // De-duplicated per cheque, at most 2 at a time per integration;
        // one dropped is picked up by the daily sync.
        state
            .imports
            .fetch_cheque_later(&integration.tenant_id, &id.to_string(), &uuid);
    }
    Ok(ok(WebhookAck { duplicate: false }))
}
