//! The one error type of the HTTP API and its mapping to the SPEC envelope
//! `{"success": false, "message": "…", "error": "<code>"}` ([`ErrorBody`]).
//! Every lower-layer error (storage, domain, command, authentication) is
//! mapped here, once; internals are logged here and never sent to clients.
//! The sets of error answers routes document ([`CommandErrors`],
//! [`QueryErrors`], [`AdminErrors`]) live here too.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use karvon_adapters::StorageError;
use karvon_adapters::store::CommandError;
use karvon_domain::customer::CustomerError;
use karvon_domain::product::ProductError;
use karvon_domain::purchase_order::PurchaseOrderError;
use karvon_domain::sale::SaleError;
use karvon_domain::stock::StockError;
use karvon_domain::supplier::SupplierError;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{AuthError, AuthFailure};

/// Every error: `{"success": false, "message": …, "error": <code>}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    pub message: String,
    /// A stable, machine-readable code (`validation_error`, `not_found`, …).
    pub error: String,
}

/// A refused request: status, code and message (the [`ErrorBody`] sent).
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
        let body = ErrorBody {
            success: false,
            message: self.message,
            error: self.code.to_string(),
        };
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

impl From<karvon_adapters::integrations::RegistryError> for ApiError {
    fn from(error: karvon_adapters::integrations::RegistryError) -> Self {
        use karvon_adapters::integrations::RegistryError;
        match error {
            RegistryError::Storage(error) => error.into(),
            taken @ RegistryError::TopicTaken { .. } => {
                ApiError::new(StatusCode::CONFLICT, "mqtt_topic_taken", taken.to_string())
            }
        }
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

impl From<CustomerError> for ApiError {
    fn from(error: CustomerError) -> Self {
        let message = error.to_string();
        match error {
            CustomerError::AlreadyRegistered(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
            }
            CustomerError::NotRegistered => ApiError::not_found("customer not found"),
            CustomerError::Invalid { .. } => ApiError::validation(message),
        }
    }
}

impl From<SaleError> for ApiError {
    fn from(error: SaleError) -> Self {
        let message = error.to_string();
        match error {
            SaleError::AlreadyRecorded(_)
            | SaleError::RefundedSaleChanged(_)
            | SaleError::KindChanged(..) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
            }
            SaleError::NotRecorded => ApiError::not_found("sale not found"),
            SaleError::NothingToRefund | SaleError::RefundTooLarge { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "refund_refused", message)
            }
            SaleError::Invalid { .. } => ApiError::validation(message),
        }
    }
}

impl From<karvon_domain::meter::MeterError> for ApiError {
    fn from(error: karvon_domain::meter::MeterError) -> Self {
        use karvon_domain::meter::MeterError;
        let message = error.to_string();
        match error {
            MeterError::Unknown => ApiError::not_found(message),
            MeterError::Invalid { .. } => ApiError::validation(message),
        }
    }
}

impl From<SupplierError> for ApiError {
    fn from(error: SupplierError) -> Self {
        let message = error.to_string();
        match error {
            SupplierError::AlreadyRegistered(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", message)
            }
            SupplierError::NotRegistered => ApiError::not_found("supplier not found"),
            SupplierError::Invalid { .. } => ApiError::validation(message),
        }
    }
}

impl From<PurchaseOrderError> for ApiError {
    fn from(error: PurchaseOrderError) -> Self {
        let message = error.to_string();
        let conflict = |code| ApiError::new(StatusCode::CONFLICT, code, message.clone());
        let refused = |code| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message.clone());
        match error {
            PurchaseOrderError::AlreadyPlaced(_) => conflict("already_exists"),
            PurchaseOrderError::NotPlaced => ApiError::not_found("purchase order not found"),
            PurchaseOrderError::Closed => conflict("order_closed"),
            PurchaseOrderError::Cancelled => conflict("order_cancelled"),
            PurchaseOrderError::HasReceipts => conflict("has_receipts"),
            PurchaseOrderError::ReceiptConflict(_) => conflict("already_exists"),
            PurchaseOrderError::NotOnOrder(_) => refused("not_on_order"),
            PurchaseOrderError::OverDelivery { .. } => refused("over_delivery"),
            PurchaseOrderError::Invalid { .. } => ApiError::validation(message),
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

impl From<AuthFailure> for ApiError {
    fn from(failure: AuthFailure) -> Self {
        let message = failure.to_string();
        match failure {
            AuthFailure::Unauthenticated | AuthFailure::WrongPassword => {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
            }
            AuthFailure::MissingScope(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            AuthFailure::RateLimited { retry_after } => {
                let mut error =
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
                error.retry_after = Some(retry_after);
                error
            }
            AuthFailure::Internal(detail) => {
                tracing::error!(error = %detail, "authentication failed");
                ApiError::internal()
            }
            AuthFailure::Storage(error) => error.into(),
        }
    }
}

/// Managing credentials (creating keys): a storage failure is 503, anything
/// else is a refused request body.
impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Storage(error) => error.into(),
            other => ApiError::validation(other.to_string()),
        }
    }
}

/// The errors every command route can answer (documentation only).
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum CommandErrors {
    #[response(status = 400, description = "Invalid body")]
    Invalid(ErrorBody),
    #[response(status = 401, description = "No or invalid credentials")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "Missing scope")]
    Forbidden(ErrorBody),
    #[response(status = 413, description = "Body too large")]
    TooLarge(ErrorBody),
    #[response(status = 415, description = "Not JSON")]
    NotJson(ErrorBody),
    #[response(status = 422, description = "Semantic error or reused Idempotency-Key")]
    Unprocessable(ErrorBody),
    #[response(status = 429, description = "Rate limited")]
    RateLimited(ErrorBody),
    #[response(status = 503, description = "Storage unavailable")]
    Unavailable(ErrorBody),
}

/// The errors every query route can answer (documentation only).
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum QueryErrors {
    #[response(status = 400, description = "Invalid parameters or X-Min-Position")]
    Invalid(ErrorBody),
    #[response(status = 401, description = "No or invalid credentials")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "Missing scope")]
    Forbidden(ErrorBody),
    #[response(status = 429, description = "Rate limited")]
    RateLimited(ErrorBody),
    #[response(
        status = 503,
        description = "Read model not at X-Min-Position within 5 s"
    )]
    Unavailable(ErrorBody),
}

/// The errors every route behind the `admin` scope can answer
/// (documentation only); routes add their own (400, 404) beside it.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum AdminErrors {
    #[response(status = 401, description = "No or invalid credentials")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "Missing admin scope")]
    Forbidden(ErrorBody),
    #[response(status = 429, description = "Rate limited")]
    RateLimited(ErrorBody),
}

/// The errors every route behind the `operator` scope can answer
/// (documentation only); routes add their own (400, 404) beside it.
#[allow(dead_code)]
#[derive(utoipa::IntoResponses)]
pub enum OperatorErrors {
    #[response(status = 401, description = "No or invalid credentials")]
    Unauthorized(ErrorBody),
    #[response(status = 403, description = "Missing operator scope")]
    Forbidden(ErrorBody),
    #[response(status = 429, description = "Rate limited")]
    RateLimited(ErrorBody),
}
