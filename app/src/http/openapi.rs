//! The OpenAPI 3 document (`/api/openapi.json`, browsable at `/docs`).
//! Handlers carry their own `#[utoipa::path]`; the shapes below describe
//! the envelope around their answers.

use karvon_adapters::auth_store::ApiKeyView;
use karvon_adapters::read_models::catalog::ProductView;
use karvon_adapters::read_models::stock::{BatchView, InventoryLevel, MovementView};
use karvon_adapters::runner::ConsumerStatus;
use serde::Serialize;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{access, commands, ops, queries};
use crate::auth::CreatedKey;

/// Every error: `{"success": false, "message": …, "error": <code>}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub success: bool,
    pub message: String,
    pub error: String,
}

#[derive(Serialize, ToSchema)]
pub struct CommandData {
    /// The entity or movement the command created or changed.
    pub id: String,
    /// Opaque token; send it as `X-Min-Position` to read your write.
    pub position: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Envelope<T: ToSchema> {
    pub success: bool,
    #[schema(inline)]
    pub data: T,
}

#[derive(Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    #[schema(inline)]
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Items<T: ToSchema> {
    #[schema(inline)]
    pub items: Vec<T>,
}

#[derive(Serialize, ToSchema)]
pub struct LoginData {
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct RevokeData {
    pub id: uuid::Uuid,
    pub revoked: bool,
}

pub type CommandAnswer = Envelope<CommandData>;
pub type ProductAnswer = Envelope<ProductView>;
pub type ProductPage = Envelope<Page<ProductView>>;
pub type InventoryPage = Envelope<Page<InventoryLevel>>;
pub type MovementPage = Envelope<Page<MovementView>>;
pub type LoginAnswer = Envelope<LoginData>;
pub type KeyAnswer = Envelope<CreatedKey>;
pub type KeyList = Envelope<Items<ApiKeyView>>;
pub type RevokeAnswer = Envelope<RevokeData>;
pub type ProjectionList = Envelope<Items<ConsumerStatus>>;
pub type StatusAnswer = Envelope<serde_json::Value>;

#[derive(OpenApi)]
#[openapi(
    info(title = "Karvon API", description = "Event-sourced integration backend. Every answer is an envelope; \
        commands answer a position token usable as X-Min-Position."),
    paths(
        commands::register_product, commands::update_product, commands::discontinue_product,
        commands::receive_stock, commands::issue_stock, commands::adjust_stock, commands::transfer_stock,
        queries::list_products, queries::get_product, queries::inventory_levels, queries::movement_history,
        access::login, access::create_key, access::list_keys, access::revoke_key,
        ops::health, ops::ready, ops::metrics, ops::projections, ops::rebuild_projection,
    ),
    components(schemas(ErrorBody, CommandData, BatchView)),
    modifiers(&BearerAuth),
    tags(
        (name = "products", description = "The catalogue"),
        (name = "stock", description = "Stock movements and levels"),
        (name = "auth", description = "Login and API keys"),
        (name = "operations", description = "Health, readiness, metrics, projections"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`<prefix>_<secret>`) or a login token from /api/auth/login",
                    ))
                    .build(),
            ),
        );
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
