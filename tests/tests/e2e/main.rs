//! End-to-end tests: the real application, a real store (a fresh
//! PostgreSQL database or SQLite file per test), real HTTP on a random
//! port. One test binary with modules, so the workspace links it once.
//!
//! Tests of behaviour both backends promise are written once as
//! `async fn name(backend: Backend)` and listed in `on_both_backends!`,
//! which makes `name::postgres` and `name::sqlite`. Tests of
//! PostgreSQL-only machinery (snapshot horizons, advisory-lock takeover,
//! row-level security) stay plain tests.

/// One test per backend for each named `async fn(Backend)`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(karvon_tests::Backend::Postgres).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(karvon_tests::Backend::Sqlite).await
            }
        }
    )*};
}

mod api;
mod audit;
mod auth;
mod consumers;
mod customers;
mod executor;
mod feed;
mod hardening;
mod idempotency;
mod imports;
mod meters;
mod nats;
mod procurement;
mod rebuild;
mod regos;
mod runners;
mod sales;
mod sqlite;
mod stock_alerts;
mod webhooks;
