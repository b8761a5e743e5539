//! Operational endpoints, outside `/api` and without credentials: liveness,
//! readiness, Prometheus metrics; and the answer for unknown routes.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use karvon_adapters::runner;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::envelope::{Envelope, ok};
use super::error::{ApiError, ErrorBody};

/// The operational routes with their documentation (the fallback is set
/// on the whole router, in `http::router`).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

/// The process answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(value_type = String)]
    pub status: &'static str,
}

#[utoipa::path(get, path = "/health", tag = "operations", summary = "Liveness",
    responses((status = 200, description = "Alive", body = inline(Envelope<Health>))))]
pub async fn health() -> Json<Envelope<Health>> {
    ok(Health { status: "ok" })
}

/// The store answers and every migration is applied.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// Always `ok`.
    #[schema(value_type = String)]
    pub store: &'static str,
    /// Always `applied`.
    #[schema(value_type = String)]
    pub migrations: &'static str,
}

/// Ready when the store answers and every migration is applied.
#[utoipa::path(get, path = "/ready", tag = "operations", summary = "Readiness: store reachable, migrations applied",
    responses((status = 200, description = "Ready", body = inline(Envelope<Readiness>)),
        (status = 503, description = "Not ready", body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Envelope<Readiness>>, ApiError> {
    match state.db.migrations_applied().await {
        Ok(true) => Ok(ok(Readiness {
            store: "ok",
            migrations: "applied",
        })),
        Ok(false) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "migrations are not applied",
        )),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the event store is unreachable",
            ))
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", summary = "Prometheus metrics",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    // The consumers' figures cost a count over the unapplied events (and on
    // PostgreSQL a pg_locks scan): at most once per interval, however often
    // and by however many scrapers this is asked.
    let due = state
        .consumer_figures_at
        .lock()
        .map(|mut at| {
            let due = at.is_none_or(|at| at.elapsed() >= CONSUMER_FIGURES_EVERY);
            if due {
                *at = Some(std::time::Instant::now());
            }
            due
        })
        .unwrap_or(false);
    let statuses = if due {
        runner::status(&state.db, &state.registry.consumers())
            .await
            .ok()
    } else {
        None
    };
    if let Some(statuses) = statuses {
        for status in statuses {
            metrics::gauge!("karvon_projection_lag_events", "projection" => status.name.clone())
                .set(status.lag_events as f64);
            metrics::gauge!("karvon_projection_lag_seconds", "projection" => status.name.clone())
                .set(status.lag_seconds);
            metrics::gauge!("karvon_projection_failed", "projection" => status.name.clone())
                .set(if status.state == "failed" { 1.0 } else { 0.0 });
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// How often `/metrics` refreshes the feed consumers' gauges.
const CONSUMER_FIGURES_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
