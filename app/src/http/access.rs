//! Extractors that state in a handler's signature what its caller needs:
//! [`ReadAccess`], [`WriteAccess`] or [`AdminAccess`] (a credential with
//! that scope), or [`Peer`] (the caller's address). They only read the
//! request; `crate::auth::Authenticator` decides, and its refusals become
//! answers in `error.rs`.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::auth::Principal;

/// The caller's address (its IP), or `unknown` when the server was not
/// started with connect info. Failed attempts are counted under it; it is
/// never taken from a header a client can set.
pub struct Peer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(peer_address(parts)))
    }
}

fn peer_address(parts: &Parts) -> String {
    match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(address)) => address.ip().to_string(),
        None => "unknown".to_string(),
    }
}

/// The credential of `Authorization: Bearer <credential>`, if any.
fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(str::trim)
}

macro_rules! access {
    ($name:ident, $scope:literal) => {
        #[doc = concat!("A caller holding the `", $scope, "` scope.")]
        pub struct $name(pub Principal);

        impl FromRequestParts<AppState> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &AppState,
            ) -> Result<Self, Self::Rejection> {
                let principal = state
                    .auth
                    .authorize(bearer(parts), &peer_address(parts), $scope)
                    .await?;
                Ok(Self(principal))
            }
        }
    };
}

access!(ReadAccess, "read");
access!(WriteAccess, "write");
access!(AdminAccess, "admin");
access!(OperatorAccess, "operator");
