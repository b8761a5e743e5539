//! What every query handler shares. Queries read the tenant's rows only;
//! list answers put rows in `data.items` with `data.next_cursor` where
//! paged. `X-Min-Position` makes a query wait (bounded) until the
//! projections it reads have applied the given command.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use karvon_adapters::records::{self, Reader};
use karvon_adapters::runner;
use karvon_projections::PositionToken;

use super::AppState;
use super::error::ApiError;
use crate::auth::Principal;

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;

/// A read transaction for the caller's tenant (on PostgreSQL as the query
/// role: the row-level-security wall).
pub async fn reader(state: &AppState, principal: &Principal) -> Result<Reader, ApiError> {
    Ok(records::tenant_reader(&state.db, principal.tenant.as_str()).await?)
}

/// Ends a reader at once: a dropped transaction would only roll back when
/// its connection is next used, holding its table locks (and blocking a
/// rebuild's swap) while it idles in the pool.
pub async fn finish(reader: Reader) -> Result<(), ApiError> {
    Ok(reader.finish().await?)
}

/// `limit` defaults to 100 and is capped at 1000; zero or less is refused.
pub fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(limit) if limit < 1 => Err(ApiError::validation("limit must be at least 1")),
        Some(limit) => Ok(limit.min(MAX_PAGE)),
    }
}

/// Trims the look-ahead row and returns the last row kept when there is a
/// further page.
pub fn next_page<T>(items: &mut Vec<T>, limit: i64) -> Option<&T> {
    if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last()
    } else {
        None
    }
}

/// Waits (at most `min_position_wait`, capped at 5 s) until `projections`
/// have applied the command whose answer was sent as `X-Min-Position`. A
/// token of another tenant, or a malformed one, is refused at once.
pub async fn wait_for_position(
    state: &AppState,
    principal: &Principal,
    headers: &HeaderMap,
    projections: &[&str],
) -> Result<(), ApiError> {
    let Some(value) = headers.get("x-min-position") else {
        return Ok(());
    };
    let refused =
        || ApiError::validation("X-Min-Position is not a position a command answered with");
    let target: PositionToken = value
        .to_str()
        .ok()
        .and_then(|text| text.trim().trim_matches('"').parse().ok())
        .ok_or_else(refused)?;
    let tenant = principal.tenant.as_str();
    let own = match &target {
        // Stream ids start with their tenant.
        PositionToken::Stream { aggregate_id, .. } => aggregate_id
            .strip_prefix(tenant)
            .is_some_and(|rest| rest.starts_with('/')),
        PositionToken::Feed(position) => {
            runner::tenant_at(&state.db, *position).await?.as_deref() == Some(tenant)
        }
    };
    if !own {
        return Err(refused());
    }
    let wait = state.min_position_wait.min(Duration::from_secs(5));
    let mut wakeup = state.wakeup.clone();
    if runner::wait_until_applied(&state.db, &mut wakeup, projections, &target, wait).await? {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_caught_up",
            "the read model has not reached the requested position yet; retry",
        ))
    }
}
