//! Test support for Karvon's end-to-end tests (and the benchmarks): a fresh
//! PostgreSQL database per test, the real application on a random port, and
//! a full-replay oracle to compare read models against.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use karvon_app::{Application, Config, Role};
use karvon_domain::stock::{Lots, StockEvent};
use karvon_projections::{Position, stock};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The server the tests create their databases on.
pub fn server_url() -> String {
    std::env::var("KARVON_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// A database of its own, dropped (with its connections) when the test ends.
pub struct TestDb {
    pub url: String,
    name: String,
    /// A login role made for this database (dropped with it).
    role: Option<String>,
}

impl TestDb {
    pub async fn create() -> anyhow::Result<Self> {
        let name = format!("karvon_t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&format!("{}/postgres", server_url()))
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        Ok(Self {
            url: format!("{}/{name}", server_url()),
            name,
            role: None,
        })
    }

    /// A database owned by a new, unprivileged login role (no superuser, no
    /// BYPASSRLS, no CREATEROLE), connected to as that role: how Karvon
    /// runs in production. An administrator has made it a member of
    /// `karvon_query`, as the migration's hint asks.
    pub async fn create_owned_by_new_role() -> anyhow::Result<Self> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let (name, role) = (format!("karvon_t_{suffix}"), format!("karvon_r_{suffix}"));
        let mut admin = PgConnection::connect(&format!("{}/postgres", server_url())).await?;
        sqlx::query(
            "DO $$ BEGIN CREATE ROLE karvon_query NOLOGIN;
               EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        )
        .execute(&mut admin)
        .await?;
        sqlx::query(&format!(
            "CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE"
        ))
        .execute(&mut admin)
        .await?;
        sqlx::query(&format!("GRANT karvon_query TO {role}"))
            .execute(&mut admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name} OWNER {role}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let host = server_url()
            .rsplit_once('@')
            .map(|(_, host)| host.to_string())
            .context("server url has no user")?;
        Ok(Self {
            url: format!("postgres://{role}@{host}/{name}"),
            name,
            role: Some(role),
        })
    }

    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(8)
            .connect(&self.url)
            .await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let role = self.role.clone();
        // Drop runs outside async; use a private runtime on a plain thread.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) =
                    PgConnection::connect(&format!("{}/postgres", server_url())).await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                    if let Some(role) = role {
                        let _ = sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
                            .execute(&mut admin)
                            .await;
                    }
                }
            });
        })
        .join();
    }
}

pub fn test_config(db: &TestDb) -> Config {
    Config {
        listen: "127.0.0.1:0".to_string(),
        database_url: db.url.clone(),
        db_max_connections: 6,
        ..Config::default()
    }
}

/// The real application (router + workers) on a random port.
pub struct TestApp {
    pub address: String,
    /// Sends the admin key of tenant `default` with every request.
    pub client: reqwest::Client,
    /// That key.
    pub token: String,
    pub pool: PgPool,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app(db: &TestDb) -> anyhow::Result<TestApp> {
    spawn_app_with(test_config(db), Role::All).await
}

pub async fn spawn_app_with(config: Config, role: Role) -> anyhow::Result<TestApp> {
    let app = Application::build(config, role).await?;
    let address = format!("http://{}", app.local_addr().context("no listener")?);
    let pool = app.pool().clone();
    let token = admin_key(&pool, "default").await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Ok(TestApp {
        address,
        client: authorized_client(&token)?,
        token,
        pool,
        stop: Some(stop),
        task: Some(task),
    })
}

impl TestApp {
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    pub async fn post_keyed(&self, path: &str, key: &str, body: &Value) -> (StatusCode, Value) {
        self.send(
            self.client
                .post(self.url(path))
                .header("Idempotency-Key", key)
                .json(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.client.get(self.url(path))).await
    }

    /// GET that waits for the given command position (read-your-writes).
    pub async fn get_after(&self, path: &str, position: &Value) -> (StatusCode, Value) {
        let token = position
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| position.to_string());
        self.send(
            self.client
                .get(self.url(path))
                .header("X-Min-Position", token),
        )
        .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body read");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("body is not JSON ({status}): {text}"));
        (status, body)
    }

    /// Graceful stop: finishes requests and batches in hand.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A key with every scope and a limit no test reaches.
pub async fn admin_key(pool: &PgPool, tenant: &str) -> anyhow::Result<String> {
    let key = karvon_app::auth::create_api_key(
        pool,
        tenant,
        vec!["admin".to_string()],
        Some(1_000_000),
        None,
        None,
    )
    .await?;
    Ok(key.key)
}

/// A client that sends `Authorization: Bearer <token>` on every request.
pub fn authorized_client(token: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// A product registration body.
pub fn product(id: &str, category: &str, reorder_level: Option<&str>) -> Value {
    let mut body = serde_json::json!({
        "product_id": id, "sku": format!("SKU-{id}"), "name": format!("Product {id}"),
        "category": category, "unit": "pcs"
    });
    if let Some(level) = reorder_level {
        body["reorder_level"] = Value::from(level);
    }
    body
}

pub async fn event_count(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await?)
}

/// Waits until every named consumer has applied every committed event.
pub async fn wait_caught_up(
    pool: &PgPool,
    names: &[&str],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::text[]) AS wanted(name)
              LEFT JOIN projection_checkpoints c ON c.name = wanted.name
              WHERE c.name IS NULL OR EXISTS (
                    SELECT 1 FROM events e
                     WHERE (e.transaction_id, e.global_position) > (c.transaction_id, c.position))",
        )
        .bind(
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>(),
        )
        .fetch_one(pool)
        .await?;
        if behind == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "projections {names:?} did not catch up in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// (tenant, warehouse, product) → (on hand, batches as JSON).
pub type StockLevels = BTreeMap<(String, String, String), (String, Value)>;

/// The oracle: folds every stored stock event from scratch, in feed order.
pub async fn replayed_stock(pool: &PgPool) -> anyhow::Result<(StockLevels, i64)> {
    replayed_stock_until(pool, None).await
}

/// The oracle up to and including `until` (a checkpoint).
pub async fn replayed_stock_until(
    pool: &PgPool,
    until: Option<Position>,
) -> anyhow::Result<(StockLevels, i64)> {
    let until = until.unwrap_or(Position::new(u64::MAX >> 1, i64::MAX));
    let rows = sqlx::query(
        "SELECT metadata ->> 'tenant_id' AS tenant, payload, recorded_at FROM events
          WHERE aggregate_type = 'StockItem'
            AND (transaction_id, global_position) <= ($1::text::xid8, $2)
          ORDER BY transaction_id, global_position",
    )
    .bind(until.transaction_id.to_string())
    .bind(until.global_position)
    .fetch_all(pool)
    .await?;
    let mut lots: BTreeMap<(String, String, String), Lots> = BTreeMap::new();
    for row in &rows {
        let event: StockEvent = serde_json::from_value(row.get("payload"))?;
        let key = (
            row.get::<String, _>("tenant"),
            event.warehouse_id().to_string(),
            event.product_id().to_string(),
        );
        stock::apply(lots.entry(key).or_default(), &event, row.get("recorded_at"));
    }
    let levels = lots
        .into_iter()
        .map(|(key, lots)| {
            let batches = serde_json::to_value(lots.as_slice()).expect("batches serialise");
            (key, (lots.on_hand().normalize().to_string(), batches))
        })
        .collect();
    Ok((levels, rows.len() as i64))
}

/// What the stock projection holds, in the oracle's shape, plus its number
/// of movement rows.
pub async fn projected_stock(pool: &PgPool) -> anyhow::Result<(StockLevels, i64)> {
    let rows = sqlx::query(
        "SELECT tenant_id, warehouse_id, product_id, on_hand, batches FROM stock.levels",
    )
    .fetch_all(pool)
    .await?;
    let mut levels = StockLevels::new();
    for row in rows {
        let on_hand: rust_decimal::Decimal = row.get("on_hand");
        levels.insert(
            (
                row.get("tenant_id"),
                row.get("warehouse_id"),
                row.get("product_id"),
            ),
            (on_hand.normalize().to_string(), row.get("batches")),
        );
    }
    let movements: i64 = sqlx::query_scalar("SELECT count(*) FROM stock.movements")
        .fetch_one(pool)
        .await?;
    Ok((levels, movements))
}

/// Every row of a table as JSON text, sorted: for exact comparisons.
pub async fn table_dump(pool: &PgPool, table: &str) -> anyhow::Result<Vec<String>> {
    let rows: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT row_to_json(t)::text FROM {table} t ORDER BY row_to_json(t)::text"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// A projection's checkpoint as stored.
pub async fn checkpoint(pool: &PgPool, name: &str) -> anyhow::Result<Option<Position>> {
    let row = sqlx::query(
        "SELECT transaction_id::text AS txid, position FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| {
        Position::new(
            row.get::<String, _>("txid").parse().unwrap_or(0),
            row.get("position"),
        )
    }))
}

/// Appends `events` stock receipts straight into the events table (as
/// postgres-es would write them) spread over `streams` stock items of
/// warehouse `warehouse`, in one transaction: a fast way to make a feed.
pub async fn append_raw_receipts(
    pool: &PgPool,
    warehouse: &str,
    events: i64,
    streams: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         SELECT 'StockItem', 'default/' || $1 || '/P' || (g % $3), g / $3 + 1, 'StockReceived', '1',
                jsonb_build_object('StockReceived', jsonb_build_object(
                    'warehouse_id', $1, 'product_id', 'P' || (g % $3), 'qty', ((g % 7) + 1)::text,
                    'batch', CASE WHEN g % 3 = 0 THEN 'B' || (g % 5) END,
                    'expiry_date', CASE WHEN g % 3 = 0 THEN (date '2027-01-01' + (g % 5)::int)::text END,
                    'unit_cost', null, 'supplier_id', null, 'purchase_order_id', null)),
                jsonb_build_object('tenant_id', 'default', 'source', 'system', 'actor', 'test',
                    'correlation_id', 'bulk',
                    'occurred_at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'))
           FROM generate_series(0, $2 - 1) AS g",
    )
    .bind(warehouse)
    .bind(events)
    .bind(streams)
    .execute(pool)
    .await?;
    Ok(())
}

/// Where the compiled `karvon` binary is (built by `cargo test --workspace`
/// because karvon-app has integration tests).
pub fn karvon_binary() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test binary has no target dir")?;
    let binary = target.join("karvon");
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: run `cargo build -p karvon-app --bin karvon` first",
        binary.display()
    );
    Ok(binary)
}
