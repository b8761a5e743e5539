# Karvon developer recipes. Every recipe is a plain cargo command underneath.

database_url := env_var_or_default("KARVON_DATABASE_URL", "sqlite://./karvon-data/karvon.db")
postgres_url := "postgres://postgres@127.0.0.1:5432/karvon"

# List recipes.
default:
    @just --list

# Run the server (SQLite in ./karvon-data unless KARVON_DATABASE_URL says otherwise).
run:
    KARVON_DATABASE_URL={{database_url}} cargo run --release -p karvon-app --bin karvon -- serve

# Run the server against the local PostgreSQL.
run-postgres:
    KARVON_DATABASE_URL={{postgres_url}} cargo run --release -p karvon-app --bin karvon -- serve

# Apply migrations to the configured database.
migrate:
    KARVON_DATABASE_URL={{database_url}} cargo run -p karvon-app --bin karvon -- migrate

# Run every test (unit, aggregate, end-to-end against local PostgreSQL and SQLite).
test:
    cargo test --workspace

# Check formatting.
fmt-check:
    cargo fmt --all -- --check

# Clippy with warnings as errors.
clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# All static checks.
lint: fmt-check clippy

# Benchmarks on both backends: HTTP commands/s and projection catch-up, each beside its baseline.
bench:
    cargo run --release -p karvon-bench

# Fuzz the HTTP API from its OpenAPI document with Schemathesis (PyPI).
fuzz-api:
    tools/fuzz-api.sh
