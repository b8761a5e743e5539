//! Inbound third-party webhooks: `POST /api/integrations/webhook?integration=<id>`
//! for an integration of kind `webhook_source`.
//!
//! A delivery is accepted when it carries a valid Standard Webhooks
//! signature (`webhook-id`, `webhook-timestamp` within 5 minutes,
//! `webhook-signature` by one of the integration's `signing_secrets`, over
//! the raw body) or a Bearer key with scope `webhooks` of the
//! integration's tenant. Refused deliveries count as failed attempts of
//! the peer (the same limit as other unauthenticated calls). An
//! integration with a non-empty `settings.ip_allowlist` (addresses or CIDR
//! ranges) takes deliveries only from the connection addresses it lists:
//! any other peer is answered 403 before anything else is looked at.
//!
//! The event runs the same command as the HTTP route (`product_created` →
//! register, `order_created` → record a sale, `stock_updated` → an
//! adjustment with reason `webhook`) with `source = webhook`, actor
//! `integration:<id>` and the idempotency key
//! `webhook:<integration>:<webhook-id>`, so a redelivery never doubles: an
//! id already applied is acknowledged from `webhook_deliveries`, and one
//! that raced past that check answers from the idempotency log.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use karvon_adapters::integrations::{self as store, IpAllowlist, StoredIntegration};
use karvon_domain::TenantId;
use karvon_projections::Source;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::access::Peer;
use super::command::CommandContext;
use super::envelope::{CommandData, Envelope, ok};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, parse_json};
use super::{AppState, REQUEST_ID, products, sales, stock};
use crate::auth::Principal;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive_webhook))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WebhookQuery {
    /// The integration the delivery is for.
    integration: String,
}

impl WebhookQuery {
    pub(super) fn integration(&self) -> &str {
        &self.integration
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    ProductCreated,
    OrderCreated,
    StockUpdated,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookEvent {
    event_type: EventType,
    /// A `POST /api/v1/products` body, a `POST /api/v1/sales` body, or
    /// `{warehouse_id, product_id, counted_qty}`.
    #[schema(value_type = Object)]
    payload: Value,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Duplicate {
    pub(super) webhook_id: String,
    /// Always `true`: this id was applied before; nothing changed.
    pub(super) duplicate: bool,
}

#[utoipa::path(post, path = "/api/integrations/webhook", tag = "integrations", summary = "Receive a third-party webhook",
    request_body = WebhookEvent,
    params(WebhookQuery,
        ("webhook-id" = Option<String>, Header, description = "Standard Webhooks message id (also the idempotency key)"),
        ("webhook-timestamp" = Option<String>, Header, description = "Unix seconds; within 5 minutes of now"),
        ("webhook-signature" = Option<String>, Header, description = "Space-separated `v1,<base64 HMAC-SHA256>` entries")),
    responses(
        (status = 201, description = "Applied", body = inline(Envelope<CommandData>)),
        (status = 200, description = "This webhook id was applied before; nothing changed", body = inline(Envelope<Duplicate>)),
        (status = 400, description = "Invalid event or payload; nothing recorded", body = ErrorBody),
        (status = 401, description = "Missing, forged or stale signature; nothing recorded", body = ErrorBody),
        (status = 403, description = "The sender's address is not in the integration's `ip_allowlist`; nothing recorded", body = ErrorBody),
        (status = 404, description = "No such webhook_source integration", body = ErrorBody),
        (status = 429, description = "Too many refused attempts from this peer", body = ErrorBody)),
    security((), ("bearer" = [])))]
pub async fn receive_webhook(
    State(state): State<AppState>,
    Peer(peer): Peer,
    ApiQuery(query): ApiQuery<WebhookQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let no_such = || ApiError::not_found("no such webhook_source integration");
    let integration_id = Uuid::parse_str(&query.integration).map_err(|_| no_such())?;
    let integration = store::get(&state.db, integration_id)
        .await?
        .filter(|integration| integration.kind == "webhook_source")
        .ok_or_else(no_such)?;
    check_allowlist(&integration, &peer)?;
    let webhook_id = match bearer(&headers) {
        Some(token) => {
            let principal = state.auth.authorize(Some(token), &peer, "webhooks").await?;
            if principal.tenant.as_str() != integration.tenant_id {
                return Err(no_such());
            }
            header_text(&headers, "webhook-id").map(str::to_string)
        }
        None => Some(verify(&state, &peer, &integration, &headers, &body).await?),
    };
    let webhook_id = match webhook_id {
        Some(id) => checked_webhook_id(id)?,
        None => format!("bearer:{}", Uuid::now_v7()),
    };
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
    let event: WebhookEvent = parse_json(&body)?;
    let context = webhook_context(&integration, &webhook_id, &headers, &body)?;
    let answer = match event.event_type {
        EventType::ProductCreated => {
            products::register(&state, payload(event.payload)?, context).await?
        }
        EventType::OrderCreated => sales::record(&state, payload(event.payload)?, context).await?,
        EventType::StockUpdated => {
            let Value::Object(mut fields) = event.payload else {
                return Err(ApiError::validation("payload must be an object"));
            };
            if fields.contains_key("reason") {
                return Err(ApiError::validation(
                    "payload: unknown field `reason` (stock_updated adjustments have reason \"webhook\")",
                ));
            }
            fields.insert("reason".into(), Value::String("webhook".into()));
            stock::adjust(&state, payload(Value::Object(fields))?, context).await?
        }
    };
    store::record_delivery(&state.db, integration_id, &webhook_id).await?;
    Ok(answer.into_response())
}

/// 403 unless the integration has no allow-list or `peer` (the
/// connection's address, never a header) is in it.
pub(super) fn check_allowlist(integration: &StoredIntegration, peer: &str) -> Result<(), ApiError> {
    let Some(allowlist) = IpAllowlist::of(&integration.settings) else {
        return Ok(());
    };
    if allowlist.allows(peer.parse().ok()) {
        return Ok(());
    }
    if allowlist.unreadable() > 0 {
        tracing::warn!(integration = %integration.id, unreadable = allowlist.unreadable(),
            "ip_allowlist has entries that are not addresses or ranges; they match nothing");
    }
    tracing::warn!(integration = %integration.id, peer, "webhook refused: sender not in ip_allowlist");
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "this address may not deliver webhooks for this integration",
    ))
}

/// Checks the Standard Webhooks headers against the integration's signing
/// secrets; answers the webhook id. A refusal counts against the peer.
pub(super) async fn verify(
    state: &AppState,
    peer: &str,
    integration: &StoredIntegration,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, ApiError> {
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header_text(headers, "webhook-id"),
        header_text(headers, "webhook-timestamp"),
        header_text(headers, "webhook-signature"),
    ) else {
        return Err(refuse(state, peer, integration, "signature headers missing").await);
    };
    let Some(key) = &state.secrets_key else {
        tracing::error!(integration = %integration.id, "integration secrets cannot be opened: no KARVON_SECRETS_KEY");
        return Err(unavailable());
    };
    let secrets = key.open(integration.id, &integration.sealed_secrets).map_err(|error| {
        tracing::error!(integration = %integration.id, %error, "integration secrets cannot be opened");
        unavailable()
    })?;
    let keys: Vec<Vec<u8>> = secrets
        .get("signing_secrets")
        .and_then(Value::as_array)
        .map(|secrets| {
            secrets
                .iter()
                .filter_map(Value::as_str)
                .filter_map(|secret| store::signing_key(secret).ok())
                .collect()
        })
        .unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    match store::verify_signature(&keys, id, timestamp, signatures, body, now) {
        Ok(()) => Ok(id.to_string()),
        Err(error) => Err(refuse(state, peer, integration, &error.to_string()).await),
    }
}

/// 401 (or 429 once the peer is over its limit of failed attempts).
async fn refuse(
    state: &AppState,
    peer: &str,
    integration: &StoredIntegration,
    reason: &str,
) -> ApiError {
    tracing::warn!(integration = %integration.id, peer, reason, "webhook refused");
    match state.auth.authenticate(None, peer).await {
        Err(crate::auth::AuthFailure::Unauthenticated) | Ok(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "webhook signature missing, invalid or stale",
        ),
        Err(failure) => failure.into(),
    }
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "secrets_unavailable",
        "the integration's secrets cannot be read on this server",
    )
}

/// The metadata of the command a delivery runs: `source = webhook`, actor
/// `integration:<id>`, idempotency key `webhook:<integration>:<webhook id>`.
pub(super) fn webhook_context<'a>(
    integration: &'a StoredIntegration,
    webhook_id: &'a str,
    headers: &'a HeaderMap,
    body: &'a [u8],
) -> Result<impl FnOnce(String) -> Result<CommandContext, ApiError> + 'a, ApiError> {
    let tenant = TenantId::parse(&integration.tenant_id).map_err(|error| {
        tracing::error!(integration = %integration.id, %error, "integration has an invalid tenant");
        ApiError::internal()
    })?;
    Ok(move |response_id: String| {
        let principal = Principal {
            tenant,
            time_zone: chrono_tz::UTC,
            actor: format!("integration:{}", integration.id),
            scopes: Vec::new(),
            rate_limit: crate::auth::DEFAULT_RATE_LIMIT,
        };
        let mut command_headers = HeaderMap::new();
        let key = format!("webhook:{}:{webhook_id}", integration.id);
        command_headers.insert(
            "idempotency-key",
            HeaderValue::from_str(&key).map_err(|_| ApiError::validation("invalid webhook-id"))?,
        );
        if let Some(request_id) = headers.get(REQUEST_ID) {
            command_headers.insert(REQUEST_ID, request_id.clone());
        }
        let mut hasher = Sha256::new();
        hasher.update(b"webhook\n");
        hasher.update(body);
        let fingerprint = format!("{:x}", hasher.finalize());
        let mut context =
            CommandContext::new(&principal, &command_headers, fingerprint, response_id)?;
        context.metadata.source = Source::Webhook.as_str().to_string();
        Ok(context)
    })
}

fn payload<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|error| ApiError::validation(format!("payload: {error}")))
}

/// A webhook id becomes part of an idempotency key: 1–200 visible ASCII.
pub(super) fn checked_webhook_id(id: String) -> Result<String, ApiError> {
    if (1..=200).contains(&id.len()) && id.bytes().all(|byte| byte.is_ascii_graphic()) {
        Ok(id)
    } else {
        Err(ApiError::validation(
            "webhook-id must be 1–200 visible ASCII characters",
        ))
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    header_text(headers, header::AUTHORIZATION.as_str()).and_then(|value| {
        value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
    })
}
