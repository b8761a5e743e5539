//! Projection administration (`/api/v1/admin/projections`, `admin` scope):
//! where every feed consumer stands, and rebuilding a read model.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use karvon_adapters::runner::{self, ProjectionStatus};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::access::AdminAccess;
use super::envelope::{Envelope, Items, ok};
use super::error::{AdminErrors, ApiError, ErrorBody};

/// The admin routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(projections))
        .routes(routes!(rebuild_projection))
}

#[utoipa::path(get, path = "/api/v1/admin/projections", tag = "operations", summary = "Projection positions and lag",
    responses((status = 200, description = "Projections", body = inline(Envelope<Items<ProjectionStatus>>)),
        AdminErrors),
    security(("bearer" = [])))]
pub async fn projections(
    State(state): State<AppState>,
    AdminAccess(_principal): AdminAccess,
) -> Result<Json<Envelope<Items<ProjectionStatus>>>, ApiError> {
    let items = runner::status(&state.db).await?;
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
        AdminErrors),
    security(("bearer" = [])))]
pub async fn rebuild_projection(
    State(state): State<AppState>,
    AdminAccess(_principal): AdminAccess,
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
