//! Acrel meter webhooks (SPEC §3 "Integrations"): `POST
//! /api/v1/acrel/webhooks/{kind}?integration=<id>` for an `acrel`
//! integration, signed the Standard Webhooks way with one of its
//! `signing_secrets` (±5 min), optionally limited to its `ip_allowlist`,
//! idempotent by `webhook-id`. The payloads are those of the MQTT topics
//! (`fixtures/acrel/`) and run the same meter commands.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use karvon_adapters::integrations as store;
use karvon_adapters::mqtt::{MessageKind, meter_command};
use karvon_domain::ids::meter_stream_id;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::access::Peer;
use super::command::accepted;
use super::envelope::{CommandData, Envelope, ok};
use super::error::{ApiError, ErrorBody};
use super::extract::ApiQuery;
use super::webhooks::{
    Duplicate, WebhookQuery, check_allowlist, checked_webhook_id, verify, webhook_context,
};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive_acrel_webhook))
}

#[utoipa::path(post, path = "/api/v1/acrel/webhooks/{kind}", tag = "meters",
    summary = "Receive an Acrel webhook: meter-reading, alert, status-change, disconnect-confirm, reconnect-confirm",
    params(("kind" = String, Path, description = "meter-reading | alert | status-change | disconnect-confirm | reconnect-confirm"), WebhookQuery,
        ("webhook-id" = String, Header, description = "Standard Webhooks id"),
        ("webhook-timestamp" = String, Header, description = "Unix seconds, within 5 minutes of now"),
        ("webhook-signature" = String, Header, description = "v1,<base64 HMAC-SHA256 of id.timestamp.body>")),
    request_body(content = Object, description = "The Acrel payload of that kind"),
    responses(
        (status = 202, description = "Recorded", body = inline(Envelope<CommandData>)),
        (status = 200, description = "This webhook-id was applied before", body = inline(Envelope<Duplicate>)),
        (status = 400, description = "Unusable payload", body = ErrorBody),
        (status = 401, description = "Signature missing, invalid or stale", body = ErrorBody),
        (status = 403, description = "Sender not in the ip_allowlist", body = ErrorBody),
        (status = 404, description = "No such acrel integration or kind", body = ErrorBody)))]
pub async fn receive_acrel_webhook(
    State(state): State<AppState>,
    Peer(peer): Peer,
    Path(kind): Path<String>,
    ApiQuery(query): ApiQuery<WebhookQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = match kind.as_str() {
        "meter-reading" => MessageKind::Reading,
        "status-change" => MessageKind::Status,
        "disconnect-confirm" => MessageKind::DisconnectConfirm,
        "reconnect-confirm" => MessageKind::ReconnectConfirm,
        "alert" => MessageKind::Alert,
        other => return Err(ApiError::not_found(format!("no Acrel webhook {other:?}"))),
    };
    let no_such = || ApiError::not_found("no such acrel integration");
    let integration_id = Uuid::parse_str(query.integration()).map_err(|_| no_such())?;
    let integration = store::get(&state.db, integration_id)
        .await?
        .filter(|integration| integration.kind == "acrel")
        .ok_or_else(no_such)?;
    check_allowlist(&integration, &peer)?;
    let webhook_id =
        checked_webhook_id(verify(&state, &peer, &integration, &headers, &body).await?)?;
    if store::delivery_seen(&state.db, integration_id, &webhook_id).await? {
        return Ok((
            StatusCode::OK,
            ok(Duplicate {
                webhook_id,
                duplicate: true,
            }),
        )
            .into_response());
    }
    let (meter_id, command) =
        meter_command(kind, None, None, &body).map_err(ApiError::validation)?;
    let context =
        webhook_context(&integration, &webhook_id, &headers, &body)?(meter_id.to_string())?;
    let stream = meter_stream_id(&context.tenant, &meter_id);
    let executed = state
        .meters
        .execute(&stream, command, &context.metadata)
        .await?;
    store::record_delivery(&state.db, integration_id, &webhook_id).await?;
    Ok(accepted(StatusCode::ACCEPTED, executed, context).into_response())
}
