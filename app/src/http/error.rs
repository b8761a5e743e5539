//! The one error type of the HTTP API and its mapping to the SPEC envelope
//! `{"success": false, "message": "…", "error": "<code>"}`. Internals are
//! logged here, once, and never sent to clients.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use karvon_adapters::StorageError;
use karvon_adapters::store::CommandError;
use karvon_domain::product::ProductError;
use karvon_domain::stock::StockError;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (429 answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_error", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"success": false, "message": self.message, "error": self.code});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StorageError> for ApiError {
    fn from(error: StorageError) -> Self {
        tracing::error!(%error, "storage failure");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "storage is unavailable; retry later",
        )
    }
}

impl From<ProductError> for ApiError {
    fn from(error: ProductError) -> Self {
        let message = error.to_string();
        match error {
            ProductError::AlreadyRegistered(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
            }
            ProductError::NotRegistered => ApiError::not_found("product not found"),
            ProductError::Discontinued => {
                ApiError::new(StatusCode::CONFLICT, "discontinued", message)
            }
            ProductError::Invalid { .. } => ApiError::validation(message),
        }
    }
}

impl From<StockError> for ApiError {
    fn from(error: StockError) -> Self {
        let message = error.to_string();
        match error {
            StockError::InsufficientStock { .. } => {
                ApiError::new(StatusCode::CONFLICT, "insufficient_stock", message)
            }
            StockError::SameWarehouse => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "same_warehouse", message)
            }
            StockError::Invalid { .. } => ApiError::validation(message),
        }
    }
}

impl<E> From<CommandError<E>> for ApiError
where
    E: std::error::Error + Into<ApiError>,
{
    fn from(error: CommandError<E>) -> Self {
        match error {
            CommandError::Domain(error) => error.into(),
            CommandError::KeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request",
            ),
            CommandError::Contended => ApiError::new(
                StatusCode::CONFLICT,
                "concurrent_modification",
                "too many concurrent changes to the same item; retry",
            ),
            CommandError::Storage(error) => error.into(),
        }
    }
}
