//! `just bench`: Karvon's throughput on each backend (PostgreSQL, then the
//! embedded SQLite default), each number beside a baseline measured in the
//! same run on the same machine.
//!
//! 1. HTTP commands/s: single stock receipts from 8 clients through the real
//!    router, beside raw single-row commits from 8 tasks on the same store.
//!    Phases: receipts with 8 clients over 64 and over 8 streams, 16 clients
//!    on one hot stream, sales of 3 lines, real-time-sales and
//!    inventory-levels reads; each beside raw commits.
//! 2. Sales lag at a steady rate (open loop, default 500 sales/s of 3 lines,
//!    every worker running): for each sale, the time from its scheduled
//!    send until `GET /api/integrations/real-time-sales?period=daily` with
//!    `X-Min-Position: <its position>` answers (p50/p99/max), and the rate
//!    achieved; beside the plain command round trip at the same rate.
//! 3. Projection catch-up: replaying >= 1,000,000 events into the stock read
//!    model (the runner's step, batch + checkpoint per transaction), beside
//!    the same events through cqrs-es's inline `GenericQuery` path (the
//!    postgres-es / sqlite-es view repository, one load + save per event).
//! 4. A year of sales (SPEC scale: 1,000,000 sales of 3 lines over 365
//!    days, written straight into the events table): the sales projection's
//!    catch-up through the live runner (events/s), then
//!    `real-time-sales` daily and monthly over that year through the real
//!    router (reads/s, p50/p99), beside reads of one event by its stream id
//!    and the year's count and gross total computed from the raw events in
//!    SQL.
//! 5. The NATS relay (`relay`): events/s to JetStream from a backlog beside
//!    async-nats publishing the same bodies; commit-to-subscriber lag at
//!    1,000 events/s.
//! 6. Supplier performance (`procurement`): 100 suppliers × 10,000 POs,
//!    catch-up beside a runner folding nothing, query p50/p99 beside a
//!    single-row read.
//! 7. 1C imports (`imports`): 100,000 products from a fake SOAP service and
//!    from a CommerceML upload, products/s beside raw 100-row batch inserts;
//!    `inventory-levels` p50/p99 during the import beside idle.
//! 8. REGOS sync (`regos`): 10,000 cheques of 3 lines from a fake gateway,
//!    cheques/s beside the same requests made straight to the gateway.
//! 9. MQTT meter readings (`meters`): 100,000 readings of 10,000 meters
//!    ingested end to end, beside the broker's own publish → subscribe rate.
//!
//! Knobs: `KARVON_BENCH_SECS` (default 10), `KARVON_BENCH_EVENTS`
//! (default 1,000,000; 0 skips 3), `KARVON_BENCH_BASELINE_EVENTS` (default
//! 20,000), `KARVON_BENCH_SALES_RATE` (default 500 sales/s; 0 skips 2),
//! `KARVON_BENCH_YEAR_SALES` (default 1,000,000; 0 skips 4),
//! `KARVON_BENCH_RELAY_EVENTS` (default 1,000,000; 0 skips 5),
//! `KARVON_BENCH_PURCHASE_ORDERS` (default 10,000; 0 skips 6),
//! `KARVON_BENCH_IMPORT_PRODUCTS` (default 100,000; 0 skips 7),
//! `KARVON_BENCH_REGOS_CHEQUES` (default 10,000; 0 skips 8),
//! `KARVON_BENCH_METER_READINGS` (default 100,000; 0 skips 9),
//! `KARVON_BENCH_BACKENDS` (default `postgres,sqlite`),
//! `KARVON_BENCH_ROLE=api` (phase 1 without workers).

mod imports;
mod meters;
mod procurement;
mod regos;
mod relay;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cqrs_es::persist::GenericQuery;
use cqrs_es::{EventEnvelope, Query, View};
use karvon_adapters::read_models::sales::SalesProjection;
use karvon_adapters::read_models::stock::StockProjection;
use karvon_adapters::registry;
use karvon_adapters::runner::{self, Consumer, Runner, RunnerSettings};
use karvon_app::{Config, Role};
use karvon_domain::stock::{Lots, StockEvent, StockItem};
use karvon_projections::names;
use karvon_tests::{
    Backend, Db, Portable, TestApp, TestDb, append_raw_receipts, product, spawn_app_with,
    test_config, wait_caught_up,
};
use postgres_es::PostgresViewRepository;
use serde::{Deserialize, Serialize};
use sqlite_es::SqliteViewRepository;

// The allocator the `karvon` binary runs with (see app/src/main.rs), so the
// in-process server measured here is the one that ships.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    karvon_app::without_transparent_huge_pages();
    let seconds = knob("KARVON_BENCH_SECS", 10);
    let events = knob("KARVON_BENCH_EVENTS", 1_000_000) as i64;
    let baseline_events = knob("KARVON_BENCH_BASELINE_EVENTS", 20_000) as i64;
    let sales_rate = knob("KARVON_BENCH_SALES_RATE", 500);
    let year_sales = knob("KARVON_BENCH_YEAR_SALES", 1_000_000) as i64;
    let purchase_orders = knob("KARVON_BENCH_PURCHASE_ORDERS", 10_000) as usize;
    let relay_events = knob("KARVON_BENCH_RELAY_EVENTS", 1_000_000) as i64;
    let import_products = knob("KARVON_BENCH_IMPORT_PRODUCTS", 100_000) as usize;
    let regos_cheques = knob("KARVON_BENCH_REGOS_CHEQUES", 10_000) as usize;
    let meter_readings = knob("KARVON_BENCH_METER_READINGS", 100_000) as usize;
    println!(
        "karvon bench {}: {seconds}s load phases, {events} events to replay, sales at {sales_rate}/s, \
         a year of {year_sales} sales (build: release expected)\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );

    let backends =
        std::env::var("KARVON_BENCH_BACKENDS").unwrap_or_else(|_| "postgres,sqlite".to_string());
    for name in backends.split(',') {
        let backend = match name.trim() {
            "postgres" => Backend::Postgres,
            "sqlite" => Backend::Sqlite,
            other => anyhow::bail!("unknown backend {other:?} in KARVON_BENCH_BACKENDS"),
        };
        println!(
            "######## backend: {} (load average {}) ########\n",
            backend.name(),
            load_average()
        );
        let db = TestDb::create_on(backend).await?;
        commands(&db, seconds).await?;
        if sales_rate > 0 {
            sales_lag(backend, sales_rate, seconds).await?;
        }
        if events > 0 {
            catch_up(&db, events, baseline_events).await?;
        }
        drop(db);
        if year_sales > 0 {
            sales_year(backend, year_sales, seconds).await?;
        }
        if relay_events > 0 {
            let db = TestDb::create_on(backend).await?;
            relay::run(&db, relay_events, seconds).await?;
        }
        if purchase_orders > 0 {
            let db = TestDb::create_on(backend).await?;
            procurement::run(&db, purchase_orders).await?;
        }
        if import_products > 0 {
            let db = TestDb::create_on(backend).await?;
            imports::run(&db, import_products).await?;
        }
        if regos_cheques > 0 {
            let db = TestDb::create_on(backend).await?;
            regos::run(&db, regos_cheques).await?;
        }
        if meter_readings > 0 {
            let db = TestDb::create_on(backend).await?;
            meters::run(&db, meter_readings).await?;
        }
    }
    Ok(())
}

/// The machine's 1/5/15-minute load averages (Linux), to tell a quiet
/// run from one sharing its cores.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".to_string())
}

struct Latencies(Vec<Duration>);

impl Latencies {
    /// Sorts the samples.
    fn new(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        Self(samples)
    }

    /// The `p` quantile in milliseconds (samples sorted).
    fn percentile(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let index = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[index].as_secs_f64() * 1000.0
    }

    fn max(&self) -> f64 {
        self.percentile(1.0)
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
            let body = sale_body(&format!("S{worker}-{n}"), worker, n);
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

/// A sale of 3 lines of the 64 bench products, at branch `B<worker % 4>`
/// by cashier `c<worker>`, happening now.
fn sale_body(sale_id: &str, worker: usize, n: usize) -> serde_json::Value {
    serde_json::json!({
    "sale_id": sale_id, "branch_id": format!("B{}", worker % 4),
    "cashier": format!("c{worker}"), "sale_type": "retail", "payment_type": "card",
    "occurred_at": chrono::Utc::now().to_rfc3339(),
    "lines": [
        {"product_id": format!("P{}", n % 64), "qty": "1", "unit_price": "12500"},
        {"product_id": format!("P{}", (n + 7) % 64), "qty": "2", "unit_price": "3000"},
        {"product_id": format!("P{}", (n + 13) % 64), "qty": "1", "unit_price": "990.50"},
    ]})
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
    (all.len() as f64 / elapsed, Latencies::new(all), failures)
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

/// What one open-loop run measured.
struct OpenLoop {
    /// Commands answered with success per second, from the first scheduled
    /// send to the last answer.
    achieved: f64,
    /// Scheduled send → command answered.
    commands: Latencies,
    /// Scheduled send → `real-time-sales` answered with the sale applied
    /// (empty when not followed).
    visible: Latencies,
    failed: u64,
}

/// Sends `rate` sales a second for `seconds` on a fixed schedule (open
/// loop: a slow answer never delays the next send, and every latency
/// counts from the send's scheduled time); with `follow`, each answered
/// sale is then followed by `real-time-sales?period=daily` carrying its
/// position in `X-Min-Position` (asked again after a 503 until it answers).
async fn open_loop(app: &TestApp, prefix: &str, rate: u64, seconds: u64, follow: bool) -> OpenLoop {
    let sales_url = Arc::new(app.url("/api/v1/sales"));
    let report_url = Arc::new(app.url("/api/integrations/real-time-sales?period=daily"));
    let total = (rate * seconds) as usize;
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        let offset = Duration::from_secs_f64(n as f64 / rate as f64);
        let due = start + offset;
        tokio::time::sleep_until(due).await;
        let (client, sales_url, report_url) =
            (app.client.clone(), sales_url.clone(), report_url.clone());
        let body = sale_body(&format!("{prefix}-{n}"), n % 8, n);
        tasks.push(tokio::spawn(async move {
            let answer = client
                .post(sales_url.as_str())
                .json(&body)
                .send()
                .await
                .ok()?;
            if !answer.status().is_success() {
                return None;
            }
            let answer: serde_json::Value = answer.json().await.ok()?;
            let command = due.elapsed();
            let answered = offset + command;
            if !follow {
                return Some((command, None, answered));
            }
            let position = match &answer["data"]["position"] {
                serde_json::Value::String(token) => token.clone(),
                other => other.to_string(),
            };
            loop {
                let response = client
                    .get(report_url.as_str())
                    .header("X-Min-Position", &position)
                    .send()
                    .await
                    .ok()?;
                match response.status() {
                    status if status.is_success() => {
                        response.bytes().await.ok()?;
                        break;
                    }
                    reqwest::StatusCode::SERVICE_UNAVAILABLE
                        if due.elapsed() < Duration::from_secs(60) => {}
                    _ => return None,
                }
            }
            Some((command, Some(due.elapsed()), answered))
        }));
    }
    let (mut commands, mut visible, mut failed) = (Vec::new(), Vec::new(), 0);
    let mut last = Duration::ZERO;
    for task in tasks {
        match task.await {
            Ok(Some((command, seen, answered))) => {
                commands.push(command);
                visible.extend(seen);
                last = last.max(answered);
            }
            _ => failed += 1,
        }
    }
    OpenLoop {
        achieved: commands.len() as f64 / last.as_secs_f64().max(f64::EPSILON),
        commands: Latencies::new(commands),
        visible: Latencies::new(visible),
        failed,
    }
}

/// Sales at a steady rate with every worker running: how long until each
/// is visible in `real-time-sales`, beside the command round trip alone at
/// the same rate.
async fn sales_lag(backend: Backend, rate: u64, seconds: u64) -> anyhow::Result<()> {
    let db = TestDb::create_on(backend).await?;
    let mut config: Config = test_config(&db);
    config.db_max_connections = 16;
    config.log = "warn".into();
    let app = spawn_app_with(config, Role::All).await?;
    for index in 0..64 {
        app.post(
            "/api/v1/products",
            &product(&format!("P{index}"), "bench", None),
        )
        .await;
    }
    let baseline = open_loop(&app, "base", rate, seconds, false).await;
    // The measured phase starts with every consumer caught up (the stock
    // reactor still has the baseline's sales in hand).
    let names = registry::Registry::default().names();
    wait_caught_up(&app.db, &names, Duration::from_secs(600)).await?;
    let measured = open_loop(&app, "lag", rate, seconds, true).await;
    app.stop().await?;

    println!(
        "== Sales at a steady {rate}/s for {seconds}s (open loop, 3 lines each, every worker running) =="
    );
    let line = |name: &str, run: &OpenLoop, latencies: &Latencies| {
        println!(
            "{name:<38} {:>5.0}/s of {rate}/s  p50 {:.2} ms  p99 {:.2} ms  max {:.1} ms  ({} failed)",
            run.achieved,
            latencies.percentile(0.50),
            latencies.percentile(0.99),
            latencies.max(),
            run.failed
        );
    };
    line(
        "command -> visible in real-time-sales",
        &measured,
        &measured.visible,
    );
    line("  of which the command", &measured, &measured.commands);
    line("baseline: the command alone", &baseline, &baseline.commands);
    println!(
        "ratio (visible / command alone):       p50 {:.1}x  p99 {:.1}x",
        measured.visible.percentile(0.50) / baseline.commands.percentile(0.50),
        measured.visible.percentile(0.99) / baseline.commands.percentile(0.99)
    );
    for (name, run) in [("baseline", &baseline), ("measured", &measured)] {
        if run.achieved < rate as f64 * 0.95 || run.failed > 0 {
            println!(
                "!! {} did NOT sustain {rate} sales/s in the {name} run: {:.0}/s answered, {} failed",
                backend.name(),
                run.achieved,
                run.failed
            );
        }
    }
    println!();
    Ok(())
}

/// The year the year-of-sales phase fills (UTC, the tenant's zone).
const YEAR: i32 = 2025;

/// A year of sales at the SPEC's scale: catch-up of the sales projection,
/// then `real-time-sales` over the year, beside raw reads of the events.
async fn sales_year(backend: Backend, sales: i64, seconds: u64) -> anyhow::Result<()> {
    let db = TestDb::create_on(backend).await?;
    let mut config: Config = test_config(&db);
    config.db_max_connections = 16;
    config.log = "warn".into();
    let batch_size = config.projection_batch_size;
    // The API alone: the sales projection is run below on its own, so the
    // stock reactor does not turn a year of sales into 3M stock commands.
    let app = spawn_app_with(config, Role::Api).await?;

    let started = Instant::now();
    let mut written = 0;
    while written < sales {
        let size = 100_000.min(sales - written);
        append_raw_sales(&app.db, written, size, sales).await?;
        written += size;
    }
    let write_rate = written as f64 / started.elapsed().as_secs_f64();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let runner = Runner::new(
        app.db.clone(),
        Consumer::Projection(Arc::new(SalesProjection)),
        RunnerSettings {
            batch_size,
            ..RunnerSettings::default()
        },
    );
    let started = Instant::now();
    let running = tokio::spawn(runner.run(stopped));
    wait_caught_up(&app.db, &[names::SALES], Duration::from_secs(7200)).await?;
    let catch_up = started.elapsed();
    let _ = stop.send(true);
    running.await?;

    let range = format!("date_from={YEAR}-01-01&date_to={YEAR}-12-31");
    let (status, body) = app
        .get(&format!(
            "/api/integrations/real-time-sales?period=yearly&{range}"
        ))
        .await;
    anyhow::ensure!(
        status.is_success() && body["data"]["buckets"][0]["sales_count"] == sales,
        "the year's answer does not count every sale: {status} {body}"
    );
    let daily = app.url(&format!(
        "/api/integrations/real-time-sales?period=daily&{range}"
    ));
    let (daily_one, daily) = (daily.clone(), daily);
    let daily_one = drive(&app, 1, seconds, move |client, _, _| client.get(&daily_one)).await;
    let daily = drive(&app, 8, seconds, move |client, _, _| client.get(&daily)).await;
    let monthly = app.url(&format!(
        "/api/integrations/real-time-sales?period=monthly&{range}"
    ));
    let monthly = drive(&app, 8, seconds, move |client, _, _| client.get(&monthly)).await;
    let (single_rate, single) = single_event_reads(&app.db, sales, seconds).await?;
    let from_events = year_from_events(&app.db, sales).await?;
    app.stop().await?;

    println!(
        "== A year of sales: {sales} sales of 3 lines over the 365 days of {YEAR} (8 branches, 32 cashiers) =="
    );
    println!("events written (100k-row INSERT … SELECT):    {write_rate:>9.0} rows/s");
    println!(
        "sales projection catch-up (live runner, batch {batch_size}): {:>9.0} events/s  ({:.1}s)",
        sales as f64 / catch_up.as_secs_f64(),
        catch_up.as_secs_f64()
    );
    for (name, (rate, latencies, failures)) in [
        ("GET real-time-sales daily, the year, 1 client", &daily_one),
        ("GET real-time-sales daily, the year, 8 clients", &daily),
        ("GET real-time-sales monthly, the year, 8 clients", &monthly),
    ] {
        println!(
            "{name:<48} {rate:>7.1}/s  p50 {:.2} ms  p99 {:.2} ms  ({failures} failed)  ratio {:.4}",
            latencies.percentile(0.50),
            latencies.percentile(0.99),
            rate / single_rate
        );
    }
    println!(
        "baseline: one sale's event by stream id, 8 tasks {single_rate:>7.0}/s  p50 {:.2} ms  p99 {:.2} ms",
        single.percentile(0.50),
        single.percentile(0.99)
    );
    println!(
        "baseline: the year's count + gross total from the raw events, one SQL query: {:.0} ms (median of 3); \
         daily answer p50 / that = {:.2}\n",
        from_events.as_secs_f64() * 1000.0,
        daily.1.percentile(0.50) / (from_events.as_secs_f64() * 1000.0)
    );
    Ok(())
}

/// Appends sales `first .. first + count` of a year of `total` sales, each
/// `SaleRecorded` of 3 lines on its own stream, spread evenly over the 365
/// days of [`YEAR`], in one transaction: what the event store would hold.
async fn append_raw_sales(db: &Db, first: i64, count: i64, total: i64) -> anyhow::Result<()> {
    let year_start = chrono::NaiveDate::from_ymd_opt(YEAR, 1, 1)
        .context("year")?
        .and_hms_opt(0, 0, 0)
        .context("midnight")?
        .and_utc()
        .timestamp();
    const YEAR_SECONDS: i64 = 365 * 86_400;
    match db {
        Db::Postgres(pool) => {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 SELECT 'Sale', 'default/Y' || g, 1, 'SaleRecorded', '1',
                        jsonb_build_object('SaleRecorded', jsonb_build_object(
                            'sale_id', 'Y' || g, 'branch_id', 'B' || (g % 8), 'cashier', 'c' || (g % 32),
                            'customer_id', null,
                            'sale_type', CASE WHEN g % 5 = 0 THEN 'wholesale' ELSE 'retail' END,
                            'payment_type', 'card', 'occurred_at', at,
                            'lines', jsonb_build_array(
                                jsonb_build_object('product_id', 'P' || (g % 64), 'qty', '1', 'unit_price', '12500'),
                                jsonb_build_object('product_id', 'P' || ((g + 7) % 64), 'qty', '2', 'unit_price', '3000'),
                                jsonb_build_object('product_id', 'P' || ((g + 13) % 64), 'qty', '1', 'unit_price', '990.50')),
                            'unknown_products', '[]'::jsonb)),
                        jsonb_build_object('tenant_id', 'default', 'source', 'system', 'actor', 'bench',
                            'correlation_id', 'year', 'occurred_at', at)
                   FROM generate_series($1::bigint, $1::bigint + $2 - 1) AS g,
                        LATERAL (SELECT to_char(to_timestamp($4 + g * $5 / $3) AT TIME ZONE 'UTC',
                                                'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS at) AS t",
            )
            .bind(first)
            .bind(count)
            .bind(total)
            .bind(year_start)
            .bind(YEAR_SECONDS)
            .execute(pool)
            .await?;
        }
        Db::Sqlite(sqlite) => {
            sqlx::query(
                "WITH RECURSIVE series(g) AS (SELECT $1 UNION ALL SELECT g + 1 FROM series WHERE g + 1 < $1 + $2)
                 INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 SELECT 'Sale', 'default/Y' || g, 1, 'SaleRecorded', '1',
                        json_object('SaleRecorded', json_object(
                            'sale_id', 'Y' || g, 'branch_id', 'B' || (g % 8), 'cashier', 'c' || (g % 32),
                            'customer_id', null,
                            'sale_type', CASE WHEN g % 5 = 0 THEN 'wholesale' ELSE 'retail' END,
                            'payment_type', 'card', 'occurred_at', at,
                            'lines', json_array(
                                json_object('product_id', 'P' || (g % 64), 'qty', '1', 'unit_price', '12500'),
                                json_object('product_id', 'P' || ((g + 7) % 64), 'qty', '2', 'unit_price', '3000'),
                                json_object('product_id', 'P' || ((g + 13) % 64), 'qty', '1', 'unit_price', '990.50')),
                            'unknown_products', json_array())),
                        json_object('tenant_id', 'default', 'source', 'system', 'actor', 'bench',
                            'correlation_id', 'year', 'occurred_at', at)
                   FROM (SELECT g, strftime('%Y-%m-%dT%H:%M:%SZ', $4 + g * $5 / $3, 'unixepoch') AS at
                           FROM series)",
            )
            .bind(first)
            .bind(count)
            .bind(total)
            .bind(year_start)
            .bind(YEAR_SECONDS)
            .execute(&sqlite.writer)
            .await?;
            db.notify_appended();
        }
    }
    Ok(())
}

/// Reads of one sale's event by its stream (the events' primary key) from
/// 8 tasks for `seconds`: the cheapest read the store answers (no HTTP).
async fn single_event_reads(
    db: &Db,
    events: i64,
    seconds: u64,
) -> anyhow::Result<(f64, Latencies)> {
    const SELECT: &str = "SELECT payload FROM events
                           WHERE aggregate_type = 'Sale' AND aggregate_id = $1 AND sequence = 1";
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..8i64 {
        let (db, stop) = (db.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                let stream = format!("default/Y{}", (n * 7_919) % events);
                n += 8;
                let started = Instant::now();
                match &db {
                    Db::Postgres(pool) => {
                        sqlx::query(SELECT).bind(&stream).fetch_one(pool).await?;
                    }
                    Db::Sqlite(sqlite) => {
                        sqlx::query(SELECT)
                            .bind(&stream)
                            .fetch_one(&sqlite.readers)
                            .await?;
                    }
                }
                latencies.push(started.elapsed());
            }
            Ok::<_, sqlx::Error>(latencies)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    Ok((rate, Latencies::new(all)))
}

/// The median time of 3 runs of one SQL query computing the year's sales
/// count and gross total from the raw events (what answering without the
/// projection would cost, for less than the endpoint answers).
async fn year_from_events(db: &Db, sales: i64) -> anyhow::Result<Duration> {
    let (from, to) = (format!("{YEAR}-01-01"), format!("{}-01-01", YEAR + 1));
    let mut times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let (count, _total): (i64, Option<String>) = match db {
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT count(*), sum(amount)::text FROM (
                        SELECT (SELECT sum((line ->> 'qty')::numeric * (line ->> 'unit_price')::numeric)
                                  FROM jsonb_array_elements(payload -> 'SaleRecorded' -> 'lines') AS line) AS amount
                          FROM events
                         WHERE event_type = 'SaleRecorded'
                           AND payload -> 'SaleRecorded' ->> 'occurred_at' >= $1
                           AND payload -> 'SaleRecorded' ->> 'occurred_at' < $2) AS sales",
                )
                .bind(&from)
                .bind(&to)
                .fetch_one(pool)
                .await?
            }
            Db::Sqlite(sqlite) => {
                sqlx::query_as(
                    "SELECT count(*), CAST(sum(amount) AS TEXT) FROM (
                        SELECT (SELECT sum(CAST(json_extract(line.value, '$.qty') AS REAL)
                                           * CAST(json_extract(line.value, '$.unit_price') AS REAL))
                                  FROM json_each(events.payload, '$.SaleRecorded.lines') AS line) AS amount
                          FROM events
                         WHERE event_type = 'SaleRecorded'
                           AND json_extract(payload, '$.SaleRecorded.occurred_at') >= $1
                           AND json_extract(payload, '$.SaleRecorded.occurred_at') < $2)",
                )
                .bind(&from)
                .bind(&to)
                .fetch_one(&sqlite.readers)
                .await?
            }
        };
        anyhow::ensure!(
            count == sales,
            "the raw events hold {count} sales of {sales}"
        );
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[1])
}
