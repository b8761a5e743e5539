//! The shapes of successful answers. Every answer is the SPEC envelope
//! `{"success": true, "data": …}` ([`Envelope`]); handlers return these
//! types and routes document them, so the OpenAPI document describes what
//! is sent. Errors have their own envelope, `error::ErrorBody`.

use axum::Json;
use axum::http::HeaderValue;
use axum::response::{IntoResponseParts, ResponseParts};
use serde::Serialize;
use utoipa::ToSchema;

/// Every successful answer: `success` (always true) and the answer in
/// `data`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T: ToSchema> {
    /// Always `true`.
    pub success: bool,
    #[schema(inline)]
    pub data: T,
}

impl<T: ToSchema> Envelope<T> {
    pub fn new(data: T) -> Self {
        Self {
            success: true,
            data,
        }
    }
}

/// `Json(Envelope::new(data))`.
pub fn ok<T: ToSchema>(data: T) -> Json<Envelope<T>> {
    Json(Envelope::new(data))
}

/// One page of a paged list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    #[schema(inline)]
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A whole (unpaged) list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Items<T: ToSchema> {
    #[schema(inline)]
    pub items: Vec<T>,
}

/// What every command answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct CommandData {
    /// The entity or movement the command created or changed.
    pub id: String,
    /// Opaque token; send it as `X-Min-Position` to read your write.
    pub position: Option<String>,
}

/// `idempotent-replayed: true` on a command answered from the log of an
/// earlier use of its `Idempotency-Key`; nothing otherwise.
#[derive(Debug, Clone, Copy)]
pub struct Replayed(pub bool);

impl IntoResponseParts for Replayed {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Self::Error> {
        if self.0 {
            parts
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        Ok(parts)
    }
}
