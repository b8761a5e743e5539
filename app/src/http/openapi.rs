//! The skeleton of the OpenAPI 3 document (`/api/openapi.json`, browsable
//! at `/docs`): title, tags, the `bearer` scheme and shared schemas. The
//! paths are not listed here: each feature module registers its routes
//! with `utoipa_axum::routes!`, which adds a route and its documentation
//! together, and `http::router` merges them into this skeleton.

use karvon_adapters::read_models::stock::BatchView;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::envelope::CommandData;
use super::error::ErrorBody;

#[derive(OpenApi)]
#[openapi(
    info(title = "Karvon API", description = "Event-sourced integration backend. Every answer is an envelope; \
        commands answer a position token usable as X-Min-Position."),
    components(schemas(ErrorBody, CommandData, BatchView)),
    modifiers(&BearerAuth),
    tags(
        (name = "products", description = "The catalogue"),
        (name = "stock", description = "Stock movements and levels"),
        (name = "sales", description = "Sales and refunds; stock follows them"),
        (name = "customers", description = "Customers and their purchases"),
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
