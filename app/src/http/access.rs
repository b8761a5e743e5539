//! Login and API-key management (`/api/auth/login`, `/api/v1/api-keys`).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use karvon_adapters::auth_store;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::extract::JsonCommand;
#[allow(unused_imports)]
use super::openapi::*;
use crate::auth::{self, AdminAccess, AuthError, DEFAULT_RATE_LIMIT};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    username: String,
    password: String,
}

/// The peer address, for limiting login attempts.
pub struct Peer(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(auth::peer_subject(parts)))
    }
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth", summary = "Exchange a password for a token",
    request_body = Login,
    responses((status = 200, description = "Token", body = inline(LoginAnswer)),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 401, description = "Wrong username or password", body = ErrorBody),
        (status = 429, description = "Too many attempts", body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    Peer(peer): Peer,
    command: JsonCommand<Login>,
) -> Result<Json<Value>, ApiError> {
    auth::count_request(&state.bookkeeping, &peer, None, DEFAULT_RATE_LIMIT).await?;
    let Login { username, password } = command.body;
    let user = auth_store::user(&state.db, &username).await?;
    let verified = auth::verify_password(
        user.as_ref().map(|user| user.password_hash.clone()),
        password,
    )
    .await;
    let Some(user) = user.filter(|_| verified) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid username or password",
        ));
    };
    let (token, expires_at) = state
        .tokens
        .issue(&user.username, &user.tenant_id, &user.scopes)
        .map_err(|error| {
            tracing::error!(%error, "could not sign a token");
            ApiError::internal()
        })?;
    Ok(Json(
        json!({"success": true, "data": {"token": token, "expires_at": expires_at}}),
    ))
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
    responses((status = 201, description = "The key", body = inline(KeyAnswer)),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing admin scope", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
    command: JsonCommand<CreateKey>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let request = command.body;
    let scopes =
        auth::parse_scopes(request.scopes.iter().map(String::as_str)).map_err(auth_error)?;
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
    let created = auth::create_api_key(
        &state.db,
        principal.tenant.as_str(),
        scopes,
        request.rate_limit,
        request.expires_at,
        request.name.as_deref(),
    )
    .await
    .map_err(auth_error)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"success": true, "data": created})),
    ))
}

#[utoipa::path(get, path = "/api/v1/api-keys", tag = "auth", summary = "The tenant's API keys (no secrets)",
    responses((status = 200, description = "Keys", body = inline(KeyList)),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing admin scope", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
) -> Result<Json<Value>, ApiError> {
    let keys = auth_store::list_api_keys(&state.db, principal.tenant.as_str()).await?;
    Ok(Json(json!({"success": true, "data": {"items": keys}})))
}

#[utoipa::path(post, path = "/api/v1/api-keys/{id}/revoke", tag = "auth", summary = "Revoke an API key",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "Revoked", body = inline(RevokeAnswer)),
        (status = 401, description = "No or invalid credentials", body = ErrorBody),
        (status = 403, description = "Missing admin scope", body = ErrorBody),
        (status = 404, description = "No such key in this tenant", body = ErrorBody),
        (status = 429, description = "Rate limited", body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    AdminAccess(principal): AdminAccess,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let not_found = || ApiError::not_found("API key not found");
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    if !auth_store::revoke_api_key(&state.db, principal.tenant.as_str(), id).await? {
        return Err(not_found());
    }
    state.keys.forget(id);
    Ok(Json(
        json!({"success": true, "data": {"id": id, "revoked": true}}),
    ))
}

fn auth_error(error: AuthError) -> ApiError {
    match error {
        AuthError::Storage(error) => error.into(),
        other => ApiError::validation(other.to_string()),
    }
}
