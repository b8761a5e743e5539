//! Login and API-key management (`/api/auth/login`, `/api/v1/api-keys`).
//! The decisions are `crate::auth`'s; these handlers only translate.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use karvon_adapters::auth_store::{self, ApiKeyView};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::AppState;
use super::access::{AdminAccess, Peer};
use super::envelope::{Envelope, Items, ok};
use super::error::{AdminErrors, ApiError, ErrorBody};
use super::extract::JsonCommand;
use crate::auth::{self, CreatedKey};

/// The login and API-key routes with their documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    username: String,
    password: String,
}

/// A login token and when it stops working.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginData {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth", summary = "Exchange a password for a token",
    request_body = Login,
    responses((status = 200, description = "Token", body = inline(Envelope<LoginData>)),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 429, description = "Too many attempts", body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    Peer(peer): Peer,
    command: JsonCommand<Login>,
) -> Result<Json<Envelope<LoginData>>, ApiError> {
    let Login { username, password } = command.body;
    let issued = state.auth.login(&username, password, &peer).await?;
    Ok(ok(LoginData {
        token: issued.token,
        expires_at: issued.expires_at,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    name: Option<String>,
    scopes: Vec<String>,
    rate_limit: Option<i32>,
    expires_at: Option<DateTime<Utc>>,
}

#[utoipa::path(post, path = "/api/v1/api-keys", tag = "auth", summary = "Create an API key (shown once)",
    request_body = CreateKey,
    responses((status = 201, description = "The key", body = inline(Envelope<CreatedKey>)),
        (status = 400, description = "Invalid body", body = ErrorBody),
        AdminErrors),
    security(("bearer" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
    command: JsonCommand<CreateKey>,
) -> Result<(StatusCode, Json<Envelope<CreatedKey>>), ApiError> {
    let request = command.body;
    let scopes = auth::parse_scopes(request.scopes.iter().map(String::as_str))?;
    if scopes.iter().any(|scope| scope == auth::OPERATOR) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the operator scope is granted only by the CLI (karvon api-key create)",
        ));
    }
    if request
        .name
        .as_ref()
        .is_some_and(|name| name.chars().count() > 128)
    {
        return Err(ApiError::validation("name: is too long"));
    }
    if request.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(ApiError::validation("expires_at: must be in the future"));
    }
    // A minted key gets at most the limit of the credential minting it.
    let rate_limit = request
        .rate_limit
        .unwrap_or(auth::DEFAULT_RATE_LIMIT)
        .min(principal.rate_limit);
    if request
        .rate_limit
        .is_some_and(|asked| asked > principal.rate_limit)
    {
        return Err(ApiError::validation(format!(
            "rate_limit: at most {} (the limit of the credential creating the key)",
            principal.rate_limit
        )));
    }
    let created = auth::create_api_key(
        &state.db,
        principal.tenant.as_str(),
        scopes,
        Some(rate_limit),
        request.expires_at,
        request.name.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, ok(created)))
}

#[utoipa::path(get, path = "/api/v1/api-keys", tag = "auth", summary = "The tenant's API keys (no secrets)",
    responses((status = 200, description = "Keys", body = inline(Envelope<Items<ApiKeyView>>)),
        AdminErrors),
    security(("bearer" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
) -> Result<Json<Envelope<Items<ApiKeyView>>>, ApiError> {
    let items = auth_store::list_api_keys(&state.db, principal.tenant.as_str()).await?;
    Ok(ok(Items { items }))
}

/// A revoked key.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevokeData {
    pub id: Uuid,
    /// Always `true`.
    pub revoked: bool,
}

#[utoipa::path(post, path = "/api/v1/api-keys/{id}/revoke", tag = "auth", summary = "Revoke an API key",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "Revoked", body = inline(Envelope<RevokeData>)),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
        AdminErrors),
    security(("bearer" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
    Path(id): Path<String>,
) -> Result<Json<Envelope<RevokeData>>, ApiError> {
    let not_found = || ApiError::not_found("API key not found");
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    if !state
        .auth
        .revoke_api_key(principal.tenant.as_str(), id)
        .await?
    {
        return Err(not_found());
    }
    Ok(ok(RevokeData { id, revoked: true }))
}
