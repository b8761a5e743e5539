//! The integration registry (scope `admin`): which external systems the
//! caller's tenant connects, with their settings and secrets. Plain
//! configuration rows (`karvon_adapters::integrations`), not an
//! event-sourced aggregate. Secrets are sealed before they are stored and
//! never answered: the list names which secrets an integration holds.
//! `PUT /api/v1/integrations/{id}` replaces an integration's name and
//! settings (and its secrets when the body gives them: they are
//! write-only); `DELETE` removes it. Another tenant's integration is 404.

use std::fmt;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use karvon_adapters::integrations::{self as store, IntegrationView, NewIntegration};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::access::AdminAccess;
use super::envelope::{Envelope, ok};
use super::error::{AdminErrors, ApiError, CommandErrors, ErrorBody, QueryErrors};
use super::extract::JsonCommand;

/// The registry's routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_integration, list_integrations))
        .routes(routes!(update_integration, delete_integration))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIntegration {
    /// `1c_soap`, `1c_odata`, `regos`, `acrel` or `webhook_source`.
    kind: String,
    name: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    settings: Map<String, Value>,
    /// Sealed at rest, never answered.
    #[serde(default)]
    #[schema(value_type = Object)]
    secrets: Map<String, Value>,
}

/// Secrets stay out of logs.
impl fmt::Debug for CreateIntegration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateIntegration")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IntegrationCreated {
    id: Uuid,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IntegrationList {
    items: Vec<IntegrationView>,
}

#[utoipa::path(post, path = "/api/v1/integrations", tag = "integrations", summary = "Register an integration",
    request_body = CreateIntegration,
    responses(
        (status = 201, description = "Registered", body = inline(Envelope<IntegrationCreated>)),
        (status = 409, description = "Secrets given but the server has no KARVON_SECRETS_KEY (`secrets_key_missing`), or the MQTT broker and topic prefix overlap another tenant's (`mqtt_topic_taken`)", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn create_integration(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
    command: JsonCommand<CreateIntegration>,
) -> Result<(StatusCode, Json<Envelope<IntegrationCreated>>), ApiError> {
    let request = command.body;
    let name = checked_name(&request.name)?;
    let settings = store::validate(&request.kind, &request.settings, &request.secrets)
        .map_err(ApiError::validation)?;
    let id = Uuid::now_v7();
    let sealed = seal(&state, id, &request.secrets)?;
    store::insert(
        &state.db,
        &NewIntegration {
            integration_id: id,
            tenant_id: principal.tenant.as_str(),
            kind: &request.kind,
            name,
            settings: &settings,
            secrets: &sealed,
        },
    )
    .await?;
    tracing::info!(integration = %id, kind = %request.kind, tenant = %principal.tenant.as_str(), "integration registered");
    Ok((StatusCode::CREATED, ok(IntegrationCreated { id })))
}

#[utoipa::path(get, path = "/api/v1/integrations", tag = "integrations", summary = "The tenant's integrations (secrets by name only)",
    responses(
        (status = 200, description = "Oldest first", body = inline(Envelope<IntegrationList>)),
        QueryErrors),
    security(("bearer" = [])))]
pub async fn list_integrations(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
) -> Result<Json<Envelope<IntegrationList>>, ApiError> {
    let items = store::list(&state.db, principal.tenant.as_str()).await?;
    Ok(ok(IntegrationList { items }))
}

/// 1–200 characters once trimmed.
fn checked_name(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::validation("name must be 1–200 characters"));
    }
    Ok(name)
}

/// The secrets sealed for integration `id` (none: nothing to seal).
fn seal(
    state: &AppState,
    id: Uuid,
    secrets: &Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    if secrets.is_empty() {
        return Ok(Map::new());
    }
    let Some(key) = &state.secrets_key else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "secrets_key_missing",
            "storing integration secrets needs KARVON_SECRETS_KEY (32 bytes, hex or base64) on the server",
        ));
    };
    Ok(key.seal(id, secrets)?)
}

/// The integration id of a path; anything else names no integration.
fn integration_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| no_such())
}

fn no_such() -> ApiError {
    ApiError::not_found("no such integration")
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIntegration {
    /// The integration's kind, if given, must be the one it has: a kind
    /// never changes.
    kind: Option<String>,
    name: String,
    /// Replaces the stored settings (defaults filled in again).
    #[serde(default)]
    #[schema(value_type = Object)]
    settings: Map<String, Value>,
    /// Replaces every stored secret when given; left out, the stored
    /// secrets stay. Never answered.
    #[schema(value_type = Option<Object>)]
    secrets: Option<Map<String, Value>>,
}

/// Secrets stay out of logs.
impl fmt::Debug for UpdateIntegration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpdateIntegration")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field(
                "secrets",
                &self
                    .secrets
                    .as_ref()
                    .map(|secrets| secrets.keys().collect::<Vec<_>>()),
            )
            .finish()
    }
}

#[utoipa::path(put, path = "/api/v1/integrations/{id}", tag = "integrations",
    summary = "Replace an integration's name and settings (and secrets, when given)",
    request_body = UpdateIntegration,
    params(("id" = String, Path, description = "Integration id")),
    responses(
        (status = 200, description = "Replaced; the integration as listed (secret names only)", body = inline(Envelope<IntegrationView>)),
        (status = 404, description = "No such integration of the caller's tenant", body = ErrorBody),
        (status = 409, description = "Secrets given but the server has no KARVON_SECRETS_KEY (`secrets_key_missing`), or the MQTT broker and topic prefix overlap another tenant's (`mqtt_topic_taken`)", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn update_integration(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
    Path(id): Path<String>,
    command: JsonCommand<UpdateIntegration>,
) -> Result<Json<Envelope<IntegrationView>>, ApiError> {
    let id = integration_id(&id)?;
    let tenant = principal.tenant.as_str();
    let request = command.body;
    let current = store::view(&state.db, tenant, id)
        .await?
        .ok_or_else(no_such)?;
    if let Some(kind) = &request.kind {
        if *kind != current.kind {
            return Err(ApiError::validation(format!(
                "kind cannot change (this integration is {:?})",
                current.kind
            )));
        }
    }
    let name = checked_name(&request.name)?;
    let (settings, sealed) = match &request.secrets {
        Some(secrets) => (
            store::validate(&current.kind, &request.settings, secrets)
                .map_err(ApiError::validation)?,
            Some(seal(&state, id, secrets)?),
        ),
        None => (
            store::validate_settings(&current.kind, &request.settings)
                .map_err(ApiError::validation)?,
            None,
        ),
    };
    if !store::update(
        &state.db,
        tenant,
        id,
        &current.kind,
        name,
        &settings,
        sealed.as_ref(),
    )
    .await?
    {
        return Err(no_such());
    }
    tracing::info!(integration = %id, kind = %current.kind, tenant, secrets_replaced = sealed.is_some(), "integration replaced");
    let updated = store::view(&state.db, tenant, id)
        .await?
        .ok_or_else(no_such)?;
    Ok(ok(updated))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IntegrationDeleted {
    id: Uuid,
    /// Always `true`.
    deleted: bool,
}

#[utoipa::path(delete, path = "/api/v1/integrations/{id}", tag = "integrations",
    summary = "Remove an integration (its webhooks are then refused with 404)",
    params(("id" = String, Path, description = "Integration id")),
    responses(
        (status = 200, description = "Removed", body = inline(Envelope<IntegrationDeleted>)),
        (status = 404, description = "No such integration of the caller's tenant", body = ErrorBody),
        AdminErrors),
    security(("bearer" = [])))]
pub async fn delete_integration(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
    Path(id): Path<String>,
) -> Result<Json<Envelope<IntegrationDeleted>>, ApiError> {
    let id = integration_id(&id)?;
    let tenant = principal.tenant.as_str();
    if !store::delete(&state.db, tenant, id).await? {
        return Err(no_such());
    }
    tracing::info!(integration = %id, tenant, "integration removed");
    Ok(ok(IntegrationDeleted { id, deleted: true }))
}
