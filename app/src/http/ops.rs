//! Operational endpoints: liveness, readiness, metrics, projection status.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use karvon_adapters::{registry, runner};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
#[allow(unused_imports)]
use super::openapi::*;
use crate::auth::AdminAccess;

#[utoipa::path(get, path = "/health", tag = "operations", summary = "Liveness",
    responses((status = 200, description = "Alive", body = inline(StatusAnswer))))]
pub async fn health() -> Json<Value> {
    Json(json!({"success": true, "data": {"status": "ok"}}))
}

/// Ready when the store answers and every migration is applied.
#[utoipa::path(get, path = "/ready", tag = "operations", summary = "Readiness: store reachable, migrations applied",
    responses((status = 200, description = "Ready", body = inline(StatusAnswer)),
        (status = 503, description = "Not ready", body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    match state.db.migrations_applied().await {
        Ok(true) => {
            Json(json!({"success": true, "data": {"store": "ok", "migrations": "applied"}}))
                .into_response()
        }
        Ok(false) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "migrations are not applied",
        )
        .into_response(),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the event store is unreachable",
            )
            .into_response()
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    if let Ok(statuses) = runner::status(&state.db, &registry::consumers()).await {
        for status in statuses {
            metrics::gauge!("karvon_projection_lag_events", "projection" => status.name.clone())
                .set(status.lag_events as f64);
            let age = (chrono::Utc::now() - status.updated_at).num_milliseconds() as f64 / 1000.0;
            metrics::gauge!("karvon_projection_last_step_age_seconds", "projection" => status.name)
                .set(age);
        }
    }
    let body = state
        .metrics
        .as_ref()
        .map(|handle| handle.render())
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[utoipa::path(get, path = "/api/v1/admin/projections", tag = "operations", summary = "Projection positions and lag",
    responses((status = 200, description = "Projections", body = inline(ProjectionList)),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing admin scope", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn projections(
    State(state): State<AppState>,
    AdminAccess(_principal): AdminAccess,
) -> Result<Json<Value>, ApiError> {
    let statuses = runner::status(&state.db, &registry::consumers()).await?;
    Ok(Json(json!({"success": true, "data": {"items": statuses}})))
}

#[utoipa::path(post, path = "/api/v1/admin/projections/{name}/rebuild", tag = "operations",
    summary = "Rebuild a read model from the events, then swap it in",
    params(("name" = String, Path, description = "catalog or stock")),
    responses((status = 202, description = "Started; watch `generation` in the projection list", body = inline(StatusAnswer)),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing admin scope", body = ErrorBody),
        (status = 404, description = "No such read model", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rebuild_projection(
    State(state): State<AppState>,
    AdminAccess(_principal): AdminAccess,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
        Json(json!({"success": true, "data": {"name": name, "status": "started"}})),
    ))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
