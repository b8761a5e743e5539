//! `just bench`: Karvon's throughput on each backend (PostgreSQL, then the
//! embedded SQLite default), each number beside a baseline measured in the
//! same run on the same machine.
//!
//! 1. HTTP commands/s: single stock receipts from 8 clients through the real
//!    router, beside raw single-row commits from 8 tasks on the same store.
//! 2. Projection catch-up: replaying >= 1,000,000 events into the stock read
//!    model (the runner's step, batch + checkpoint per transaction), beside
//!    the same events through cqrs-es's inline `GenericQuery` path (the
//!    postgres-es / sqlite-es view repository, one load + save per event).
//!
//! Phases: receipts with 8 clients over 64 and over 8 streams, 16 clients
//! on one hot stream, sales of 3 lines, real-time-sales and
//! inventory-levels reads; each beside raw commits.
//! Knobs: `KARVON_BENCH_SECS` (default 10), `KARVON_BENCH_EVENTS`
//! (default 1,000,000), `KARVON_BENCH_BASELINE_EVENTS` (default 20,000),
//! `KARVON_BENCH_PURCHASE_ORDERS` (default 10,000; see `procurement`),
//! `KARVON_BENCH_RELAY_EVENTS` (default 1,000,000; see `relay`),
//! `KARVON_BENCH_BACKENDS` (default `postgres,sqlite`).

mod procurement;
mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cqrs_es::persist::GenericQuery;
use cqrs_es::{EventEnvelope, Query, View};
use karvon_adapters::read_models::stock::StockProjection;
use karvon_adapters::runner;
use karvon_app::{Config, Role};
use karvon_domain::stock::{Lots, StockEvent, StockItem};
use karvon_tests::{
    Backend, Db, Portable, TestDb, append_raw_receipts, product, spawn_app_with, test_config,
};
use postgres_es::PostgresViewRepository;
use serde::{Deserialize, Serialize};
use sqlite_es::SqliteViewRepository;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds = knob("KARVON_BENCH_SECS", 10);
    let events = knob("KARVON_BENCH_EVENTS", 1_000_000) as i64;
    let baseline_events = knob("KARVON_BENCH_BASELINE_EVENTS", 20_000) as i64;
    let purchase_orders = knob("KARVON_BENCH_PURCHASE_ORDERS", 10_000) as usize;
    let relay_events = knob("KARVON_BENCH_RELAY_EVENTS", 1_000_000) as i64;
    println!(
        "karvon bench: {seconds}s load phases, {events} events to replay (build: release expected)\n"
    );

    let backends =
        std::env::var("KARVON_BENCH_BACKENDS").unwrap_or_else(|_| "postgres,sqlite".to_string());
    for name in backends.split(',') {
        let backend = match name.trim() {
            "postgres" => Backend::Postgres,
            "sqlite" => Backend::Sqlite,
            other => anyhow::bail!("unknown backend {other:?} in KARVON_BENCH_BACKENDS"),
        };
        println!("######## backend: {} ########\n", backend.name());
        let db = TestDb::create_on(backend).await?;
        commands(&db, seconds).await?;
        if events > 0 {
            catch_up(&db, events, baseline_events).await?;
        }
        if relay_events > 0 {
            let db = TestDb::create_on(backend).await?;
            relay::run(&db, relay_events, seconds).await?;
        }
        if purchase_orders > 0 {
            let db = TestDb::create_on(backend).await?;
            procurement::run(&db, purchase_orders).await?;
        }
    }
    Ok(())
}

struct Latencies(Vec<Duration>);

impl Latencies {
    fn percentile(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let index = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[index].as_secs_f64() * 1000.0
    }
}

async fn commands(db: &TestDb, seconds: u64) -> anyhow::Result<()> {
    let mut config: Config = test_config(db);
    config.db_max_connections = 16;
    config.log = "warn".into();
    // KARVON_BENCH_ROLE=api measures the command path without workers.
    let role = match std::env::var("KARVON_BENCH_ROLE").as_deref() {
        Ok("api") => Role::Api,
        _ => Role::All,
    };
    let app = spawn_app_with(config, role).await?;
    for index in 0..64 {
        app.post(
            "/api/v1/products",
            &product(&format!("P{index}"), "bench", None),
        )
        .await;
    }
    // Every request carries the app's API key: authentication and the
    // per-key rate limit are part of what is measured.
    let receipts = app.url("/api/v1/stock/receipts");
    let receipt = |product: usize| serde_json::json!({"warehouse_id": "W1", "product_id": format!("P{product}"), "qty": "1"});
    let mut phases = Vec::new();
    // Each client owns 8 stock items (64 streams): no cross-client contention.
    let (url, body) = (receipts.clone(), receipt);
    phases.push((
        "receipts, 8 clients, 64 streams",
        drive(&app, 8, seconds, move |client, worker, n| {
            client.post(&url).json(&body(worker * 8 + n % 8))
        })
        .await,
    ));
    let (url, body) = (receipts.clone(), receipt);
    phases.push((
        "receipts, 8 clients, 8 streams",
        drive(&app, 8, seconds, move |client, worker, _| {
            client.post(&url).json(&body(worker))
        })
        .await,
    ));
    let (url, body) = (receipts.clone(), receipt);
    phases.push((
        "receipts, 16 clients, 1 hot stream",
        drive(&app, 16, seconds, move |client, _, _| {
            client.post(&url).json(&body(0))
        })
        .await,
    ));
    let sales_url = app.url("/api/v1/sales");
    phases.push((
        "sales of 3 lines, 8 clients",
        drive(&app, 8, seconds, move |client, worker, n| {
            let body = serde_json::json!({
            "sale_id": format!("S{worker}-{n}"), "branch_id": format!("B{}", worker % 4),
            "cashier": format!("c{worker}"), "sale_type": "retail", "payment_type": "card",
            "occurred_at": chrono::Utc::now().to_rfc3339(),
            "lines": [
                {"product_id": format!("P{}", n % 64), "qty": "1", "unit_price": "12500"},
                {"product_id": format!("P{}", (n + 7) % 64), "qty": "2", "unit_price": "3000"},
                {"product_id": format!("P{}", (n + 13) % 64), "qty": "1", "unit_price": "990.50"},
            ]});
            client.post(&sales_url).json(&body)
        })
        .await,
    ));
    let report = app.url("/api/integrations/real-time-sales?period=daily");
    phases.push((
        "GET real-time-sales (daily, a year), 8 clients",
        drive(&app, 8, seconds, move |client, _, _| client.get(&report)).await,
    ));
    let levels = app.url("/api/integrations/inventory-levels?limit=50");
    phases.push((
        "GET inventory-levels (50 rows), 8 clients",
        drive(&app, 8, seconds, move |client, _, _| client.get(&levels)).await,
    ));

    let baseline_rate = raw_commits(&app.db, seconds).await?;
    println!("== HTTP: {seconds}s per phase; every request authenticated and rate-limited ==");
    for (name, (rate, latencies, failures)) in &phases {
        println!(
            "{name:<42} {rate:>7.0}/s  p50 {:.2} ms  p99 {:.2} ms  ({failures} failed)  ratio {:.2}",
            latencies.percentile(0.50),
            latencies.percentile(0.99),
            rate / baseline_rate
        );
    }
    println!(
        "baseline: {baseline_rate:>9.0} single-row commits/s (raw INSERT + COMMIT, 8 tasks, same store)\n"
    );
    app.stop().await?;
    Ok(())
}

/// Runs `clients` concurrent clients for `seconds`, each sending the
/// request `make(client, worker, n)` in a loop; returns the rate of
/// successful requests, their latencies and the failures.
async fn drive(
    app: &karvon_tests::TestApp,
    clients: usize,
    seconds: u64,
    make: impl Fn(&reqwest::Client, usize, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
) -> (f64, Latencies, u64) {
    let make = Arc::new(make);
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let (client, stop, make) = (app.client.clone(), stop.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let request = make(&client, worker, n);
                n += 1;
                let started = Instant::now();
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        latencies.push(started.elapsed())
                    }
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failures = 0;
    for task in tasks {
        if let Ok((latencies, failed)) = task.await {
            all.extend(latencies);
            failures += failed;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / elapsed, Latencies(all), failures)
}

/// Raw commits: one-row transactions from 8 tasks (on SQLite through the
/// same single writer the application uses).
async fn raw_commits(db: &Db, seconds: u64) -> anyhow::Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    match db {
        Db::Postgres(pool) => {
            sqlx::query("CREATE TABLE IF NOT EXISTS bench_commits (id bigserial PRIMARY KEY, payload jsonb NOT NULL)").execute(pool).await?;
        }
        Db::Sqlite(sqlite) => {
            sqlx::query("CREATE TABLE IF NOT EXISTS bench_commits (id INTEGER PRIMARY KEY, payload TEXT NOT NULL)").execute(&sqlite.writer).await?;
        }
    }
    for _ in 0..8 {
        let (db, stop) = (db.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let payload = serde_json::json!({"warehouse_id": "W1", "qty": "1"});
            let insert = "INSERT INTO bench_commits (payload) VALUES ($1)";
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match &db {
                    Db::Postgres(pool) => {
                        let mut tx = pool.begin().await?;
                        sqlx::query(insert).bind(&payload).execute(&mut *tx).await?;
                        tx.commit().await?;
                    }
                    Db::Sqlite(sqlite) => {
                        let mut tx = sqlite.writer.begin().await?;
                        sqlx::query(insert).bind(&payload).execute(&mut *tx).await?;
                        tx.commit().await?;
                    }
                }
                count += 1;
            }
            Ok::<u64, sqlx::Error>(count)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn catch_up(db: &TestDb, events: i64, baseline_events: i64) -> anyhow::Result<()> {
    let store = db.db().await?;
    store.migrate().await?;
    karvon_tests::execute(&store, "DELETE FROM events").await?;
    let chunk = 100_000i64;
    let started = Instant::now();
    let mut written = 0;
    let mut warehouse = 0;
    while written < events {
        let size = chunk.min(events - written);
        append_raw_receipts(&store, &format!("R{warehouse}"), size, 1_000).await?;
        written += size;
        warehouse += 1;
    }
    let insert_rate = written as f64 / started.elapsed().as_secs_f64();

    let mut results = Vec::new();
    for batch_size in [1000i64, 5000] {
        let report = runner::rebuild(&store, &StockProjection::default(), batch_size)
            .await
            .context("replay")?;
        anyhow::ensure!(
            report.events as i64 >= written,
            "replayed {} of {written}",
            report.events
        );
        results.push((
            batch_size,
            report.events as f64 / report.elapsed.as_secs_f64(),
            report.elapsed,
        ));
    }
    let baseline_rate = generic_query(&store, baseline_events).await?;

    println!(
        "== Projection catch-up: {written} StockReceived events over {} stock items ==",
        warehouse * 1_000
    );
    println!("events written (100k-row INSERT … SELECT): {insert_rate:>9.0} rows/s");
    for (batch_size, rate, elapsed) in &results {
        println!(
            "karvon runner, batch {batch_size:>5}:        {rate:>9.0} events/s  ({:.1}s)",
            elapsed.as_secs_f64()
        );
    }
    println!(
        "baseline cqrs-es GenericQuery (inline):   {baseline_rate:>9.0} events/s  (first {baseline_events} events)"
    );
    if let Some((_, best, _)) = results.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
        println!(
            "ratio:                                   {:>9.1}x the inline path",
            best / baseline_rate
        );
    }
    Ok(())
}

/// The cqrs-es way: a `View` per aggregate, loaded and saved per event
/// through postgres-es's view repository.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StockView {
    lots: Lots,
}

impl View<StockItem> for StockView {
    fn update(&mut self, event: &EventEnvelope<StockItem>) {
        self.lots.apply(&event.payload);
    }
}

async fn generic_query(db: &Db, limit: i64) -> anyhow::Result<f64> {
    const SELECT: &str =
        "SELECT aggregate_id, sequence, payload FROM events ORDER BY global_position LIMIT $1";
    let rows: Vec<EventEnvelope<StockItem>> = match db {
        Db::Postgres(pool) => {
            sqlx::query("CREATE TABLE IF NOT EXISTS stock_view (view_id text PRIMARY KEY, version bigint NOT NULL, payload json NOT NULL)")
                .execute(pool)
                .await?;
            sqlx::query(SELECT)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(envelope)
                .collect::<anyhow::Result<_>>()?
        }
        Db::Sqlite(sqlite) => {
            sqlx::query("CREATE TABLE IF NOT EXISTS stock_view (view_id TEXT PRIMARY KEY, version INTEGER NOT NULL, payload TEXT NOT NULL)")
                .execute(&sqlite.writer)
                .await?;
            sqlx::query(SELECT)
                .bind(limit)
                .fetch_all(&sqlite.readers)
                .await?
                .iter()
                .map(envelope)
                .collect::<anyhow::Result<_>>()?
        }
    };
    let started = Instant::now();
    match db {
        Db::Postgres(pool) => {
            let repository =
                PostgresViewRepository::<StockView, StockItem>::new("stock_view", pool.clone());
            dispatch_all(GenericQuery::new(Arc::new(repository)), &rows).await;
        }
        Db::Sqlite(sqlite) => {
            let repository = SqliteViewRepository::<StockView, StockItem>::new(
                "stock_view",
                sqlite.writer.clone(),
            );
            dispatch_all(GenericQuery::new(Arc::new(repository)), &rows).await;
        }
    }
    Ok(rows.len() as f64 / started.elapsed().as_secs_f64())
}

fn envelope(row: &impl Portable) -> anyhow::Result<EventEnvelope<StockItem>> {
    Ok(EventEnvelope {
        aggregate_id: row.text("aggregate_id")?,
        sequence: row.int("sequence")? as usize,
        payload: serde_json::from_value::<StockEvent>(row.json("payload")?)?,
        metadata: Default::default(),
    })
}

async fn dispatch_all<R>(
    query: GenericQuery<R, StockView, StockItem>,
    envelopes: &[EventEnvelope<StockItem>],
) where
    R: cqrs_es::persist::ViewRepository<StockView, StockItem>,
{
    for envelope in envelopes {
        query
            .dispatch(&envelope.aggregate_id, std::slice::from_ref(envelope))
            .await;
    }
}
