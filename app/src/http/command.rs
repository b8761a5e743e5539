//! What every command handler (`POST`/`PUT` under `/api/v1`) shares: the
//! event metadata of the request ([`CommandContext`]) and the answer
//! `{"id": …, "position": …}` ([`accepted`]), where `position` is the feed
//! token of the command's last event, for `X-Min-Position` read-your-writes.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use chrono::Utc;
use karvon_adapters::store::Executed;
use karvon_domain::ids::product_stream_id;
use karvon_domain::{Id, TenantId};
use karvon_projections::{EventMetadata, Source};

use super::envelope::{CommandData, Envelope, Replayed};
use super::error::ApiError;
use super::{AppState, REQUEST_ID};
use crate::auth::Principal;

/// What every command answers: its status, `idempotent-replayed` when
/// answered from the log, and [`CommandData`].
pub type CommandAnswer = (StatusCode, Replayed, Json<Envelope<CommandData>>);

/// Who is acting, for which tenant, and what goes into the metadata.
pub struct CommandContext {
    pub tenant: TenantId,
    pub metadata: EventMetadata,
    /// The id answered unless the idempotency log holds an earlier one.
    response_id: String,
}

impl CommandContext {
    pub fn new(
        principal: &Principal,
        headers: &HeaderMap,
        fingerprint: String,
        response_id: String,
    ) -> Result<Self, ApiError> {
        let tenant = principal.tenant.clone();
        let key = idempotency_key(headers)?;
        let metadata = EventMetadata {
            tenant_id: tenant.to_string(),
            occurred_at: Utc::now(),
            source: Source::Http.as_str().to_string(),
            actor: principal.actor.clone(),
            correlation_id: header_text(headers.get(REQUEST_ID)).unwrap_or_else(new_id),
            causation_id: None,
            request_hash: key.as_ref().map(|_| fingerprint),
            idempotency_key: key,
            response_id: Some(response_id.clone()),
        };
        Ok(Self {
            tenant,
            metadata,
            response_id,
        })
    }
}

/// The answer to an executed command (the first time or a replay).
pub fn accepted(status: StatusCode, executed: Executed, context: CommandContext) -> CommandAnswer {
    let data = CommandData {
        id: executed.response_id.unwrap_or(context.response_id),
        position: executed.position.map(|position| position.to_string()),
    };
    (
        status,
        Replayed(executed.replayed),
        Json(Envelope::new(data)),
    )
}

/// An id from the path (`/products/{id}`), validated.
pub fn path_id(raw: &str) -> Result<Id, ApiError> {
    Id::parse(raw).map_err(|error| ApiError::validation(format!("id: {error}")))
}

/// A fresh id for what a command creates (a movement, a transfer).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The `Idempotency-Key` header, validated.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .ok()
        .filter(|text| {
            !text.is_empty() && text.len() <= 255 && text.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::validation("Idempotency-Key must be 1–255 visible ASCII characters")
        })?;
    Ok(Some(text.to_string()))
}

fn header_text(value: Option<&HeaderValue>) -> Option<String> {
    value
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// Whether the tenant's catalogue has `product_id`. Registration is
/// permanent, so a positive answer is kept (bounded) and never goes stale.
pub async fn product_known(
    state: &AppState,
    tenant: &TenantId,
    product_id: &Id,
) -> Result<bool, ApiError> {
    const CACHE_LIMIT: usize = 1_000_000;
    let stream = product_stream_id(tenant, product_id);
    if state
        .known_products
        .read()
        .is_ok_and(|known| known.contains(&stream))
    {
        return Ok(true);
    }
    if !state.products.load(&stream).await?.is_registered() {
        return Ok(false);
    }
    if let Ok(mut known) = state.known_products.write() {
        if known.len() >= CACHE_LIMIT {
            known.clear();
        }
        known.insert(stream);
    }
    Ok(true)
}
