//! Extractors whose rejections speak the SPEC envelope.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// Deepest JSON nesting accepted; deeper bodies are refused before serde
/// recurses into them.
const MAX_JSON_DEPTH: usize = 32;

/// A command body: `Json<T>` with envelope errors (400 for bad JSON,
/// unknown fields and invalid values; 413 over the size limit; 415 without
/// a JSON content type) plus a fingerprint of the request, so a reused
/// `Idempotency-Key` can be told apart from a retry. An empty body reads
/// as `{}`.
pub struct JsonCommand<T> {
    pub body: T,
    pub fingerprint: String,
}

impl<S, T> FromRequest<S> for JsonCommand<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let content_type_ok = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/json") || value.contains("+json"));
        let declared_empty = request
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_none_or(|value| value.as_bytes() == b"0");
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    too_large()
                } else {
                    ApiError::validation("could not read the request body")
                }
            })?;
        let bytes: &[u8] = if bytes.is_empty() && declared_empty {
            b"{}"
        } else {
            &bytes
        };
        if !content_type_ok && bytes != b"{}" {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "expected Content-Type: application/json",
            ));
        }
        let body = parse_json(bytes)?;
        let mut hasher = Sha256::new();
        hasher.update(method.as_str().as_bytes());
        hasher.update(b" ");
        hasher.update(path.as_bytes());
        hasher.update(b"\n");
        hasher.update(bytes);
        Ok(Self {
            body,
            fingerprint: format!("{:x}", hasher.finalize()),
        })
    }
}

pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "request body is too large",
    )
}

/// Parses a JSON body, refusing deep nesting first.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // PostgreSQL text and jsonb cannot hold NUL; refuse it up front rather
    // than fail at the store.
    if bytes
        .windows(6)
        .any(|window| window.eq_ignore_ascii_case(b"\\u0000"))
    {
        return Err(ApiError::validation(
            "strings must not contain NUL characters",
        ));
    }
    if json_depth_exceeds(bytes, MAX_JSON_DEPTH) {
        return Err(ApiError::validation(format!(
            "JSON is nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    serde_json::from_slice(bytes)
        .map_err(|error| ApiError::validation(format!("invalid request body: {error}")))
}

/// Scans for bracket depth without parsing (strings are skipped).
fn json_depth_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// `Query<T>` with envelope errors.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if parts
            .uri
            .query()
            .is_some_and(|query| query.to_ascii_lowercase().contains("%00"))
        {
            return Err(ApiError::validation(
                "query parameters must not contain NUL characters",
            ));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|query| ApiQuery(query.0))
            .map_err(|rejection: QueryRejection| ApiError::validation(rejection.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_scan_ignores_brackets_in_strings() {
        assert!(!json_depth_exceeds(br#"{"a":"[[[[[[[[[["}"#, 3));
        assert!(json_depth_exceeds(b"[[[[", 3));
        assert!(!json_depth_exceeds(br#"{"a":[1,{"b":2}]}"#, 3));
    }
}
