//! End-to-end tests: the real application, real PostgreSQL (a fresh
//! database per test), real HTTP on a random port. One test binary with
//! modules, so the workspace links it once.

mod api;
mod auth;
mod feed;
mod idempotency;
mod rebuild;
mod runners;
