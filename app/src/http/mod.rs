//! The HTTP API (axum): shared state, the router, and the layers every
//! request passes through (request id, tracing, timeout, body limit, panic
//! catcher, envelope for errors produced outside handlers, metrics).
//!
//! Routes are grouped by feature: `products`, `stock`, `sales`,
//! `customers`, `suppliers`, `purchase_orders` (and supplier performance),
//! `audit` (a stream's events, the tenant's feed),
//! `integrations` (the registry), `webhooks` (inbound third-party
//! webhooks), `auth` (login and API keys), `admin` (projections) and `ops`
//! (health, readiness, metrics).
//! Each exposes `routes()`, an `OpenApiRouter` whose `routes!(…)` lines
//! register a handler and its `#[utoipa::path]` documentation at once;
//! [`router`] merges them into the `openapi` skeleton. Shared pieces:
//! `access` (credential extractors), `extract` (body and query
//! extractors), `envelope` (answer types), `command` and `query` (what
//! command and query handlers share), `error` (`ApiError`, the error
//! envelope and every error mapping).

mod access;
mod acrel;
mod admin;
mod alerts;
mod audit;
mod auth;
mod command;
mod customers;
mod envelope;
mod error;
mod extract;
mod imports;
mod integrations;
mod meters;
mod openapi;
mod ops;
mod products;
mod purchase_orders;
mod query;
mod recommendations;
mod regos;
mod sales;
mod stock;
mod stream;
mod suppliers;
mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use karvon_adapters::db::Db;
use karvon_adapters::store::CommandExecutor;
use karvon_domain::customer::Customer;
use karvon_domain::product::Product;
use karvon_domain::purchase_order::PurchaseOrder;
use karvon_domain::sale::Sale;
use karvon_domain::stock::StockItem;
use karvon_domain::supplier::Supplier;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use error::ApiError;
pub use stream::StreamHub;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// Wakes read-your-writes waits when a checkpoint moves.
    pub wakeup: karvon_adapters::runner::Wakeup,
    pub products: Arc<CommandExecutor<Product>>,
    pub stock: Arc<CommandExecutor<StockItem>>,
    pub sales: Arc<CommandExecutor<Sale>>,
    pub customers: Arc<CommandExecutor<Customer>>,
    pub suppliers: Arc<CommandExecutor<Supplier>>,
    pub purchase_orders: Arc<CommandExecutor<PurchaseOrder>>,
    pub meters: Arc<CommandExecutor<karvon_domain::meter::Meter>>,
    pub alerts: Arc<CommandExecutor<karvon_domain::alert::Alert>>,
    pub metrics: Option<PrometheusHandle>,
    /// Upper bound for `X-Min-Position` waits.
    pub min_position_wait: Duration,
    /// Product streams known to be registered. Registration is permanent,
    /// so a positive answer never goes stale and is safe to share.
    pub known_products: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
    /// Checks credentials and counts requests against rate limits.
    pub auth: Arc<crate::auth::Authenticator>,
    /// Events per step when rebuilding.
    pub rebuild_batch_size: i64,
    /// When `/metrics` last refreshed the feed consumers' gauges.
    pub consumer_figures_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Seals integration secrets; `None` on PostgreSQL without
    /// `KARVON_SECRETS_KEY` (integrations with secrets are refused).
    pub secrets_key: Option<karvon_adapters::integrations::SecretsKey>,
    /// The feed consumers this configuration runs.
    pub registry: karvon_adapters::registry::Registry,
    /// Import jobs (1C, CommerceML): started here, run by the workers.
    pub imports: Arc<karvon_adapters::imports::Imports>,
    /// Where uploaded files wait for their import job.
    pub uploads_dir: std::path::PathBuf,
    /// `KARVON_TRUSTED_PROXIES`: peers whose forwarded client address counts.
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    /// The live event streams' one feed reader and their bounds.
    pub streams: Arc<stream::StreamHub>,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    /// The CommerceML upload's own, larger body limit.
    pub max_upload_bytes: usize,
    pub request_timeout: Duration,
}

/// Every route (documented ones through their feature's `routes()`), the
/// document at `/api/openapi.json` with its browser at `/docs`, and the
/// layers.
pub fn router(state: AppState, settings: &HttpSettings) -> Router {
    let (api, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(products::routes())
        .merge(stock::routes())
        .merge(sales::routes())
        .merge(customers::routes())
        .merge(suppliers::routes())
        .merge(purchase_orders::routes())
        .merge(recommendations::routes())
        .merge(integrations::routes())
        .merge(webhooks::routes())
        .merge(imports::routes(settings.max_upload_bytes))
        .merge(regos::routes())
        .merge(meters::routes())
        .merge(acrel::routes())
        .merge(alerts::routes())
        .merge(stream::routes())
        .merge(auth::routes())
        .merge(admin::routes())
        .merge(audit::routes())
        .merge(ops::routes())
        .split_for_parts();

    Router::new()
        .merge(api)
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/api/openapi.json", document))
        .fallback(ops::not_found)
        .layer(middleware::from_fn(envelope_for_bare_errors))
        .layer(DefaultBodyLimit::max(settings.max_body_bytes))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal().into_response()
        }))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            settings.request_timeout,
        ))
        .layer(middleware::from_fn(record_metrics))
        .layer(middleware::from_fn(refuse_unknown_methods))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<Body>| {
                let matched = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map(MatchedPath::as_str);
                let request_id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|value| value.to_str().ok());
                tracing::info_span!("http", method = %request.method(), path = matched, request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::from_fn(drop_unusable_request_id))
        .with_state(state)
}

/// Error answers made outside handlers (405, 408, 413 from layers) get the
/// envelope too, so every error a client sees has the same shape.
/// A client's `X-Request-Id` goes into logs and event metadata: one that is
/// not 1–64 characters of `[A-Za-z0-9._:-]` is dropped, and a fresh id is
/// made instead.
async fn drop_unusable_request_id(mut request: Request, next: Next) -> Response {
    let usable = request.headers().get(REQUEST_ID).is_none_or(|value| {
        let bytes = value.as_bytes();
        (1..=64).contains(&bytes.len())
            && bytes
                .iter()
                .all(|byte| byte.is_ascii_alphanumeric() || b"._:-".contains(byte))
    });
    if !usable {
        request.headers_mut().remove(REQUEST_ID);
    }
    next.run(request).await
}

async fn envelope_for_bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed"),
        StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "request body is too large"),
        StatusCode::NOT_FOUND => ("not_found", "not found"),
        status if status.is_server_error() => ("internal_error", "internal error"),
        _ => ("bad_request", "bad request"),
    };
    let mut replaced = ApiError::new(status, code, message).into_response();
    if let Some(allow) = response.headers().get(header::ALLOW) {
        replaced.headers_mut().insert(header::ALLOW, allow.clone());
    }
    replaced
}

/// The methods the API knows; anything else a client invents is answered
/// 405 before a metric, a span or a route sees it.
const KNOWN_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

async fn refuse_unknown_methods(request: Request, next: Next) -> Response {
    if KNOWN_METHODS.contains(request.method()) {
        return next.run(request).await;
    }
    let mut refused = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed",
    )
    .into_response();
    refused.headers_mut().insert(
        header::ALLOW,
        header::HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
    );
    refused
}

/// The `method` label: one of [`KNOWN_METHODS`] or `other` (a fixed set,
/// whatever clients send).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

async fn record_metrics(request: Request, next: Next) -> Response {
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_str().to_string();
    metrics::histogram!("karvon_http_request_duration_seconds", "method" => method, "path" => path.clone(), "status" => status.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("karvon_http_requests_total", "method" => method, "path" => path, "status" => status).increment(1);
    response
}
