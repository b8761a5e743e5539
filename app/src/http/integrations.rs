//! The integration registry (scope `admin`): which external systems the
//! caller's tenant connects, with their settings and secrets. Plain
//! configuration rows (`karvon_adapters::integrations`), not an
//! event-sourced aggregate. Secrets are sealed before they are stored and
//! never answered: the list names which secrets an integration holds.

use std::fmt;

use axum::Json;
use axum::extract::State;
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
use super::error::{ApiError, CommandErrors, ErrorBody, QueryErrors};
use super::extract::JsonCommand;

/// The registry's routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_integration, list_integrations))
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
        (status = 409, description = "Secrets given but the server has no KARVON_SECRETS_KEY", body = ErrorBody),
        CommandErrors),
    security(("bearer" = [])))]
pub async fn create_integration(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
    command: JsonCommand<CreateIntegration>,
) -> Result<(StatusCode, Json<Envelope<IntegrationCreated>>), ApiError> {
    let request = command.body;
    let name = request.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(ApiError::validation("name must be 1–200 characters"));
    }
    let settings = store::validate(&request.kind, &request.settings, &request.secrets)
        .map_err(ApiError::validation)?;
    let id = Uuid::now_v7();
    let sealed = if request.secrets.is_empty() {
        Map::new()
    } else {
        let Some(key) = &state.secrets_key else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "secrets_key_missing",
                "storing integration secrets needs KARVON_SECRETS_KEY (32 bytes, hex or base64) on the server",
            ));
        };
        key.seal(id, &request.secrets)?
    };
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
