//! Feed-consumer administration (`/api/v1/admin/projections`, scope
//! `operator`: these consumers serve every tenant, so a tenant's `admin`
//! does not steer them): where every consumer of the registry stands, rebuilding a read
//! model, and getting a consumer that stopped on an event going again
//! (retry it, or skip the event and keep it on record).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use karvon_adapters::runner::{
    self, Consumer, ConsumerStatus, SkipOutcome, SkippedEvent, checkpoint,
};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::OperatorAccess;
use super::envelope::{Envelope, Items, ok};
use super::error::{ApiError, ErrorBody, OperatorErrors};

/// The admin routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(projections))
        .routes(routes!(rebuild_projection))
        .routes(routes!(retry_consumer))
        .routes(routes!(skip_event))
        .routes(routes!(skipped_events))
}

#[utoipa::path(get, path = "/api/v1/admin/projections", tag = "operations", summary = "Every feed consumer: kind, state, position, lag, failure",
    responses((status = 200, description = "Projections", body = inline(Envelope<Items<ConsumerStatus>>)),
        OperatorErrors),
    security(("bearer" = [])))]
pub async fn projections(
    State(state): State<AppState>,
    OperatorAccess(_principal): OperatorAccess,
) -> Result<Json<Envelope<Items<ConsumerStatus>>>, ApiError> {
    let items = runner::status(&state.db, &state.registry.consumers()).await?;
    Ok(ok(Items { items }))
}

/// A rebuild that has been started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RebuildStarted {
    /// The read model.
    pub name: String,
    /// Always `started`.
    #[schema(value_type = String)]
    pub status: &'static str,
}

#[utoipa::path(post, path = "/api/v1/admin/projections/{name}/rebuild", tag = "operations",
    summary = "Rebuild a read model from the events, then swap it in",
    params(("name" = String, Path, description = "catalog or stock")),
    responses((status = 202, description = "Started; watch `generation` in the projection list", body = inline(Envelope<RebuildStarted>)),
        (status = 404, description = "No such read model", body = ErrorBody),
        OperatorErrors),
    security(("bearer" = [])))]
pub async fn rebuild_projection(
    State(state): State<AppState>,
    OperatorAccess(_principal): OperatorAccess,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Envelope<RebuildStarted>>), ApiError> {
    let handler =
        crate::read_model(&name).ok_or_else(|| ApiError::not_found("no such read model"))?;
    let pool = state.db.clone();
    let batch_size = state.rebuild_batch_size;
    // Runs in the background; a second rebuild of the same read model while
    // one runs is refused by the rebuild's own lock and logged.
    tokio::spawn(async move {
        match runner::rebuild(&pool, handler.as_ref(), batch_size).await {
            Ok(report) => tracing::info!(
                projection = handler.name(),
                events = report.events,
                "rebuild swapped in"
            ),
            Err(error) => tracing::error!(projection = handler.name(), %error, "rebuild failed"),
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        ok(RebuildStarted {
            name,
            status: "started",
        }),
    ))
}

/// The registered consumer called `name`, or 404.
fn known(state: &AppState, name: &str) -> Result<&'static str, ApiError> {
    known_consumer(state, name).map(|consumer| consumer.name())
}

fn known_consumer(state: &AppState, name: &str) -> Result<Consumer, ApiError> {
    state
        .registry
        .consumer(name)
        .ok_or_else(|| ApiError::not_found("no such feed consumer"))
}

fn not_failed() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_failed",
        "the consumer is not stopped on an event",
    )
}

/// A failed consumer told to try again.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RetryStarted {
    pub name: String,
    /// Always `retrying`.
    #[schema(value_type = String)]
    pub status: &'static str,
}

#[utoipa::path(post, path = "/api/v1/admin/projections/{name}/retry", tag = "operations",
    summary = "Make a failed consumer try its event again now",
    params(("name" = String, Path, description = "A consumer name from the projection list")),
    responses((status = 200, description = "The consumer tries again; watch `state`", body = inline(Envelope<RetryStarted>)),
        (status = 404, description = "No such consumer", body = ErrorBody),
        (status = 409, description = "The consumer is not failed", body = ErrorBody),
        OperatorErrors),
    security(("bearer" = [])))]
pub async fn retry_consumer(
    State(state): State<AppState>,
    OperatorAccess(principal): OperatorAccess,
    Path(name): Path<String>,
) -> Result<Json<Envelope<RetryStarted>>, ApiError> {
    let name = known(&state, &name)?;
    if !checkpoint::retry(&state.db, name).await? {
        return Err(not_failed());
    }
    tracing::info!(consumer = name, actor = %principal.actor, "retry requested");
    Ok(ok(RetryStarted {
        name: name.to_string(),
        status: "retrying",
    }))
}

#[utoipa::path(post, path = "/api/v1/admin/projections/{name}/skip", tag = "operations",
    summary = "Skip the event a failed consumer stopped on (kept with its error)",
    params(("name" = String, Path, description = "A consumer name from the projection list")),
    responses((status = 200, description = "Skipped; the consumer goes on", body = inline(Envelope<SkippedEvent>)),
        (status = 404, description = "No such consumer", body = ErrorBody),
        (status = 409, description = "The consumer is not failed", body = ErrorBody),
        OperatorErrors),
    security(("bearer" = [])))]
pub async fn skip_event(
    State(state): State<AppState>,
    OperatorAccess(principal): OperatorAccess,
    Path(name): Path<String>,
) -> Result<Json<Envelope<SkippedEvent>>, ApiError> {
    let consumer = known_consumer(&state, &name)?;
    let name = consumer.name();
    match checkpoint::skip(
        &state.db,
        name,
        consumer.aggregate_types(),
        &principal.actor,
    )
    .await?
    {
        SkipOutcome::Skipped(skipped) => {
            tracing::warn!(consumer = name, event_id = %skipped.event_id, actor = %principal.actor,
                "event skipped");
            Ok(ok(skipped))
        }
        SkipOutcome::NotFailed => Err(not_failed()),
    }
}

#[utoipa::path(get, path = "/api/v1/admin/projections/{name}/skipped", tag = "operations",
    summary = "The events a consumer skipped, with the error each failed with",
    params(("name" = String, Path, description = "A consumer name from the projection list")),
    responses((status = 200, description = "Skipped events, oldest first", body = inline(Envelope<Items<SkippedEvent>>)),
        (status = 404, description = "No such consumer", body = ErrorBody),
        OperatorErrors),
    security(("bearer" = [])))]
pub async fn skipped_events(
    State(state): State<AppState>,
    OperatorAccess(_principal): OperatorAccess,
    Path(name): Path<String>,
) -> Result<Json<Envelope<Items<SkippedEvent>>>, ApiError> {
    let name = known(&state, &name)?;
    let items = checkpoint::skipped(&state.db, name).await?;
    Ok(ok(Items { items }))
}
