//! 1C imports (SPEC §3 "Integrations"): start a products or clients sync
//! from a `1c_soap` / `1c_odata` integration, upload a CommerceML pair,
//! and follow a job's progress. Starting answers 202 at once; the workers
//! run the job (`karvon_adapters::imports`). One job per integration and
//! kind runs at a time: a second start answers the running job.

use std::path::{Path as FsPath, PathBuf};

use axum::Json;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use karvon_adapters::imports::{Queued, StartError, Started};
use karvon_adapters::integrations as registry;
use karvon_adapters::read_models::jobs;
use karvon_domain::import_job::{ImportKind, ImportSource, ImportStatus};
use karvon_projections::jobs::JobRow;
use karvon_projections::names;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::access::{ReadAccess, WriteAccess};
use super::envelope::{Envelope, ok};
use super::error::{ApiError, CommandErrors, ErrorBody, QueryErrors};
use super::query::{reader, wait_for_position};
use crate::auth::Principal;

/// The import routes with their documentation; the upload takes bodies up
/// to `max_upload_bytes`.
pub fn routes(max_upload_bytes: usize) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(sync_products))
        .routes(routes!(sync_clients))
        .routes(routes!(job_status))
        .routes(routes!(upload_commerceml).layer(DefaultBodyLimit::max(max_upload_bytes)))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskStarted {
    task_id: String,
    /// `started`, or `running` when this job was already running.
    status: &'static str,
    message: String,
}

/// A job's progress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TaskStatus {
    task_id: String,
    /// `products` or `clients`.
    #[schema(value_type = String)]
    kind: ImportKind,
    /// `1c_soap`, `1c_odata` or `commerceml`.
    #[schema(value_type = String)]
    source: ImportSource,
    integration_id: Option<String>,
    /// `fetching`, `processing`, `completed` or `error`.
    #[schema(value_type = String)]
    status: ImportStatus,
    total: i64,
    processed: i64,
    created: i64,
    updated: i64,
    unchanged: i64,
    /// Rejected records (their reasons in `rejected`, the first 1,000).
    errors: i64,
    #[schema(value_type = Vec<Object>)]
    rejected: serde_json::Value,
    /// Why the job failed.
    message: Option<String>,
    progress_percent: i64,
    started_at: chrono::DateTime<chrono::Utc>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<JobRow> for TaskStatus {
    fn from(row: JobRow) -> Self {
        Self {
            progress_percent: row.progress_percent(),
            task_id: row.job_id,
            kind: row.kind,
            source: row.source,
            integration_id: row.integration_id,
            status: row.status,
            total: row.total,
            processed: row.processed,
            created: row.created,
            updated: row.updated,
            unchanged: row.unchanged,
            errors: row.errors,
            rejected: row.rejected,
            message: row.message,
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }
}

pub(super) type Accepted = (StatusCode, Json<Envelope<TaskStarted>>);

#[utoipa::path(post, path = "/api/v1/integration/sync/nomenklatura/{integration_id}/", tag = "imports",
    summary = "Import the products of a 1C integration in the background",
    params(("integration_id" = String, Path, description = "A `1c_soap` or `1c_odata` integration")),
    responses(
        (status = 202, description = "Started, or the running job of this integration", body = inline(Envelope<TaskStarted>)),
        (status = 404, description = "No such integration", body = ErrorBody),
        (status = 422, description = "The integration is not a 1C one", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn sync_products(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(integration_id): Path<String>,
) -> Result<Accepted, ApiError> {
    sync(&state, &principal, &integration_id, ImportKind::Products).await
}

#[utoipa::path(post, path = "/api/v1/integration/sync/clients/{integration_id}/", tag = "imports",
    summary = "Import the clients of a 1C integration (as customers) in the background",
    params(("integration_id" = String, Path, description = "A `1c_soap` or `1c_odata` integration")),
    responses(
        (status = 202, description = "Started, or the running job of this integration", body = inline(Envelope<TaskStarted>)),
        (status = 404, description = "No such integration", body = ErrorBody),
        (status = 422, description = "The integration is not a 1C one", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn sync_clients(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Path(integration_id): Path<String>,
) -> Result<Accepted, ApiError> {
    sync(&state, &principal, &integration_id, ImportKind::Clients).await
}

async fn sync(
    state: &AppState,
    principal: &Principal,
    integration_id: &str,
    kind: ImportKind,
) -> Result<Accepted, ApiError> {
    let (id, source) = one_c_integration(state, principal, integration_id).await?;
    let job = queued(principal, Some(id), kind, source, None);
    start(state, job).await
}

/// The caller's 1C integration `integration_id` and its source kind.
async fn one_c_integration(
    state: &AppState,
    principal: &Principal,
    integration_id: &str,
) -> Result<(Uuid, ImportSource), ApiError> {
    let missing = || ApiError::not_found(format!("no integration {integration_id}"));
    let id = Uuid::parse_str(integration_id).map_err(|_| missing())?;
    let view = registry::view(&state.db, principal.tenant.as_str(), id)
        .await?
        .ok_or_else(missing)?;
    let source = match view.kind.as_str() {
        "1c_soap" => ImportSource::OneCSoap,
        "1c_odata" => ImportSource::OneCOdata,
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_a_1c_integration",
                format!("integration {integration_id} is of kind {other}, not 1c_soap or 1c_odata"),
            ));
        }
    };
    Ok((id, source))
}

pub(super) fn queued(
    principal: &Principal,
    integration: Option<Uuid>,
    kind: ImportKind,
    source: ImportSource,
    upload_dir: Option<&FsPath>,
) -> Queued {
    Queued {
        job_id: Uuid::now_v7().to_string(),
        tenant_id: principal.tenant.to_string(),
        integration_id: integration.map(|id| id.to_string()),
        kind: spelled(&kind),
        source: spelled(&source),
        upload_dir: upload_dir.map(|dir| dir.to_string_lossy().into_owned()),
        actor: principal.actor.clone(),
        params: None,
    }
}

/// How kinds and sources are spelled in the queue: as serde spells them.
fn spelled(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        _ => String::new(),
    }
}

/// Queues the job and answers 202 once its status can be read.
pub(super) async fn start(state: &AppState, job: Queued) -> Result<Accepted, ApiError> {
    let started = state
        .imports
        .start(job)
        .await
        .map_err(|error| match error {
            StartError::Storage(error) => ApiError::from(error),
            StartError::Refused(why) => ApiError::validation(why),
        })?;
    let Started {
        job_id,
        already_running,
        position,
    } = started;
    if let Some(position) = position {
        // Read-your-writes for the status endpoint; a slow projection only
        // means the first status read may wait.
        let mut wakeup = state.wakeup.clone();
        let wait = state
            .min_position_wait
            .min(std::time::Duration::from_secs(5));
        let _ = karvon_adapters::runner::wait_until_applied(
            &state.db,
            &mut wakeup,
            &[names::JOBS],
            &position,
            wait,
        )
        .await;
    }
    let (status, message) = if already_running {
        (
            "running",
            "a job of this kind is already running for this integration".to_string(),
        )
    } else {
        (
            "started",
            "the import runs in the background; follow it at the status endpoint".to_string(),
        )
    };
    Ok((
        StatusCode::ACCEPTED,
        ok(TaskStarted {
            task_id: job_id,
            status,
            message,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/integration/sync/status/{task_id}/", tag = "imports",
    summary = "An import job's progress",
    params(("task_id" = String, Path, description = "The id a start answered with")),
    responses(
        (status = 200, description = "The job", body = inline(Envelope<TaskStatus>)),
        (status = 404, description = "No such task", body = ErrorBody),
        QueryErrors),
    security(("bearer" = [])))]
pub async fn job_status(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    Path(task_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Envelope<TaskStatus>>, ApiError> {
    wait_for_position(&state, &principal, &headers, &[names::JOBS]).await?;
    let mut reader = reader(&state, &principal).await?;
    let row = jobs::get_job(&mut reader, principal.tenant.as_str(), &task_id).await?;
    reader.finish().await?;
    let row = row.ok_or_else(|| ApiError::not_found("Task not found"))?;
    Ok(ok(TaskStatus::from(row)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    /// A 1C integration whose `settings.price_type` names the retail price
    /// type (default the type named `Розница`, else the first).
    integration: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/integration/import/commerceml", tag = "imports",
    summary = "Import a CommerceML 2 catalogue (multipart `import` = import.xml, optional `offers` = offers.xml)",
    params(UploadParams),
    request_body(content_type = "multipart/form-data", description = "Fields `import` and `offers`"),
    responses(
        (status = 202, description = "Stored and started", body = inline(Envelope<TaskStarted>)),
        (status = 400, description = "No `import` part, or an unknown part", body = ErrorBody),
        (status = 404, description = "No such integration", body = ErrorBody),
        (status = 429, description = "The tenant has 2 uploads queued or running", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn upload_commerceml(
    State(state): State<AppState>,
    WriteAccess(principal): WriteAccess,
    Query(params): Query<UploadParams>,
    multipart: Multipart,
) -> Result<Accepted, ApiError> {
    let integration = match &params.integration {
        Some(id) => Some(one_c_integration(&state, &principal, id).await?.0),
        None => None,
    };
    let Some(_reservation) = state
        .imports
        .reserve_upload(principal.tenant.as_str())
        .await?
    else {
        let mut busy = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "this tenant has {} uploads queued or running; retry when one has finished",
                karvon_adapters::imports::MAX_UPLOADS_PER_TENANT
            ),
        );
        busy.retry_after = Some(30);
        return Err(busy);
    };
    let mut job = queued(
        &principal,
        integration,
        ImportKind::Products,
        ImportSource::Commerceml,
        None,
    );
    let dir = state.uploads_dir.join(&job.job_id);
    let stored = store_upload(&dir, multipart).await;
    if let Err(error) = stored {
        let _ = tokio::fs::remove_dir_all(&dir).await;
        return Err(error);
    }
    job.upload_dir = Some(dir.to_string_lossy().into_owned());
    let (started, answer) = match start(&state, job).await {
        Ok((code, body)) => (body.0.data.status == "started", Ok((code, body))),
        Err(error) => (false, Err(error)),
    };
    if !started {
        // Not queued (or another job of this integration runs): drop it.
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    answer
}

/// Streams the parts to `dir/import.xml` and `dir/offers.xml`.
async fn store_upload(dir: &PathBuf, mut multipart: Multipart) -> Result<(), ApiError> {
    let failed = |error: std::io::Error| {
        tracing::error!(%error, "storing an upload failed");
        ApiError::internal()
    };
    let refused = |error: axum::extract::multipart::MultipartError| {
        ApiError::new(error.status(), "bad_upload", error.body_text())
    };
    tokio::fs::create_dir_all(dir).await.map_err(failed)?;
    let mut has_import = false;
    while let Some(mut field) = multipart.next_field().await.map_err(refused)? {
        let file = match field.name() {
            Some("import") => {
                has_import = true;
                "import.xml"
            }
            Some("offers") => "offers.xml",
            other => {
                return Err(ApiError::validation(format!(
                    "unknown part {:?}: send `import` (import.xml) and optionally `offers` (offers.xml)",
                    other.unwrap_or_default()
                )));
            }
        };
        let mut out = tokio::fs::File::create(dir.join(file))
            .await
            .map_err(failed)?;
        while let Some(chunk) = field.chunk().await.map_err(refused)? {
            out.write_all(&chunk).await.map_err(failed)?;
        }
        out.flush().await.map_err(failed)?;
    }
    if !has_import {
        return Err(ApiError::validation(
            "the `import` part (import.xml) is required",
        ));
    }
    Ok(())
}
