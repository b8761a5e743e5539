//! Test support for Karvon's end-to-end tests (and the benchmarks): a fresh
//! database per test (PostgreSQL, or a SQLite file in its own directory),
//! the real application on a random port, and a full-replay oracle to
//! compare read models against.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
pub use karvon_adapters::db::{Backend, Db, Portable};
use karvon_app::{Application, Config, Role};
use karvon_domain::stock::{Lots, StockEvent};
use karvon_projections::{Position, stock};
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
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
    pub backend: Backend,
    name: String,
    /// A login role made for this database (dropped with it).
    role: Option<String>,
    /// The directory holding a SQLite database (removed with it).
    dir: Option<std::path::PathBuf>,
}

impl TestDb {
    /// A fresh PostgreSQL database.
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_on(Backend::Postgres).await
    }

    /// A fresh database on `backend`.
    pub async fn create_on(backend: Backend) -> anyhow::Result<Self> {
        let name = format!("karvon_t_{}", uuid::Uuid::new_v4().simple());
        if backend == Backend::Sqlite {
            let dir = std::env::temp_dir().join(&name);
            std::fs::create_dir_all(&dir)?;
            return Ok(Self {
                url: format!("sqlite://{}", dir.join("karvon.db").display()),
                backend,
                name,
                role: None,
                dir: Some(dir),
            });
        }
        let mut admin = PgConnection::connect(&format!("{}/postgres", server_url()))
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        // Uploads wait in a directory of the test's own (removed with it).
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            url: format!("{}/{name}", server_url()),
            backend,
            name,
            role: None,
            dir: Some(dir),
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
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            url: format!("postgres://{role}@{host}/{name}"),
            backend: Backend::Postgres,
            name,
            role: Some(role),
            dir: Some(dir),
        })
    }

    /// Where this database's server keeps uploads (a directory of the
    /// test's own; on SQLite beside the database file).
    pub fn uploads_dir(&self) -> Option<std::path::PathBuf> {
        self.dir.as_ref().map(|dir| dir.join("uploads"))
    }

    /// A connection of the application's own kind (migrations applied by
    /// the application it belongs to).
    pub async fn db(&self) -> anyhow::Result<Db> {
        Ok(Db::open(&self.url, 4).await?)
    }

    /// A plain pool (PostgreSQL databases only).
    pub async fn pool(&self) -> anyhow::Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(8)
            .connect(&self.url)
            .await?)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if self.backend == Backend::Sqlite {
            return;
        }
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
        uploads_dir: db
            .uploads_dir()
            .map(|dir| dir.to_string_lossy().into_owned()),
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
    pub db: Db,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

pub async fn spawn_app(db: &TestDb) -> anyhow::Result<TestApp> {
    spawn_app_with(test_config(db), Role::All).await
}

pub async fn spawn_app_with(config: Config, role: Role) -> anyhow::Result<TestApp> {
    let app = Application::build(config, role).await?;
    let address = format!("http://{}", app.local_addr().context("no listener")?);
    let db = app.db().clone();
    let token = admin_key(&db, "default").await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(app.run(async move {
        let _ = stopped.await;
    }));
    Ok(TestApp {
        address,
        client: authorized_client(&token)?,
        token,
        db,
        stop: Some(stop),
        task: Some(task),
    })
}

impl TestApp {
    /// The PostgreSQL pool, for tests of PostgreSQL-only behaviour.
    pub fn pg(&self) -> &PgPool {
        match &self.db {
            Db::Postgres(pool) => pool,
            Db::Sqlite(_) => panic!("this test needs the PostgreSQL backend"),
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.client.post(self.url(path)).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.client.put(self.url(path)).json(body)).await
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

/// A key with every scope (`admin` and the CLI-only `operator`) and a
/// limit no test reaches.
pub async fn admin_key(db: &Db, tenant: &str) -> anyhow::Result<String> {
    let key = karvon_app::auth::create_api_key(
        db,
        tenant,
        vec!["admin".to_string(), "operator".to_string()],
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

pub async fn event_count(db: &Db) -> anyhow::Result<i64> {
    const COUNT: &str = "SELECT count(*) FROM events";
    Ok(match db {
        Db::Postgres(pool) => sqlx::query_scalar(COUNT).fetch_one(pool).await?,
        Db::Sqlite(sqlite) => sqlx::query_scalar(COUNT).fetch_one(&sqlite.readers).await?,
    })
}

/// Waits until every named consumer has applied every committed event
/// (settled or not: on PostgreSQL the horizon is cluster-wide, so another
/// test's open transaction must not make this return early).
pub async fn wait_caught_up(db: &Db, names: &[&str], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let wanted: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    loop {
        let behind: i64 = match db {
            Db::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM unnest($1::text[]) AS wanted(name)
                      LEFT JOIN projection_checkpoints c ON c.name = wanted.name
                      WHERE c.name IS NULL OR EXISTS (
                            SELECT 1 FROM events e
                             WHERE (e.transaction_id, e.global_position) > (c.transaction_id, c.position))",
                )
                .bind(&wanted)
                .fetch_one(pool)
                .await?
            }
            Db::Sqlite(sqlite) => {
                sqlx::query_scalar(
                    "SELECT count(*) FROM json_each($1) AS wanted
                      LEFT JOIN projection_checkpoints c ON c.name = wanted.value
                      WHERE c.name IS NULL OR EXISTS (
                            SELECT 1 FROM events e WHERE e.global_position > c.position)",
                )
                .bind(serde_json::to_string(&wanted)?)
                .fetch_one(&sqlite.readers)
                .await?
            }
        };
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
pub async fn replayed_stock(db: &Db) -> anyhow::Result<(StockLevels, i64)> {
    replayed_stock_until(db, None).await
}

type ReplayRow = (String, Value, chrono::DateTime<chrono::Utc>);

/// The oracle up to and including `until` (a checkpoint).
pub async fn replayed_stock_until(
    db: &Db,
    until: Option<Position>,
) -> anyhow::Result<(StockLevels, i64)> {
    let until = until.unwrap_or(Position::new(u64::MAX >> 1, i64::MAX));
    let rows: Vec<ReplayRow> = match db {
        Db::Postgres(pool) => sqlx::query(
            "SELECT metadata ->> 'tenant_id' AS tenant, payload, recorded_at FROM events
              WHERE aggregate_type = 'StockItem'
                AND (transaction_id, global_position) <= ($1::text::xid8, $2)
              ORDER BY transaction_id, global_position",
        )
        .bind(until.transaction_id.to_string())
        .bind(until.global_position)
        .fetch_all(pool)
        .await?
        .iter()
        .map(replay_row)
        .collect::<anyhow::Result<_>>()?,
        Db::Sqlite(sqlite) => sqlx::query(
            "SELECT json_extract(metadata, '$.tenant_id') AS tenant, payload, recorded_at
               FROM events
              WHERE aggregate_type = 'StockItem' AND global_position <= $1
              ORDER BY global_position",
        )
        .bind(until.global_position)
        .fetch_all(&sqlite.readers)
        .await?
        .iter()
        .map(replay_row)
        .collect::<anyhow::Result<_>>()?,
    };
    let mut lots: BTreeMap<(String, String, String), Lots> = BTreeMap::new();
    for (tenant, payload, recorded_at) in &rows {
        let event: StockEvent = serde_json::from_value(payload.clone())?;
        let key = (
            tenant.clone(),
            event.warehouse_id().to_string(),
            event.product_id().to_string(),
        );
        stock::apply(lots.entry(key).or_default(), &event, *recorded_at);
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

fn replay_row(row: &impl Portable) -> anyhow::Result<ReplayRow> {
    Ok((
        row.text("tenant")?,
        row.json("payload")?,
        row.time("recorded_at")?,
    ))
}

/// What the stock projection holds, in the oracle's shape, plus its number
/// of movement rows.
pub async fn projected_stock(db: &Db) -> anyhow::Result<(StockLevels, i64)> {
    let backend = db.backend();
    let select = format!(
        "SELECT tenant_id, warehouse_id, product_id, on_hand, batches FROM {}",
        backend.table("stock", "levels")
    );
    let count = format!(
        "SELECT count(*) FROM {}",
        backend.table("stock", "movements")
    );
    let (rows, movements): (Vec<_>, i64) = match db {
        Db::Postgres(pool) => (
            sqlx::query(&select)
                .fetch_all(pool)
                .await?
                .iter()
                .map(level_row)
                .collect::<anyhow::Result<_>>()?,
            sqlx::query_scalar(&count).fetch_one(pool).await?,
        ),
        Db::Sqlite(sqlite) => (
            sqlx::query(&select)
                .fetch_all(&sqlite.readers)
                .await?
                .iter()
                .map(level_row)
                .collect::<anyhow::Result<_>>()?,
            sqlx::query_scalar(&count)
                .fetch_one(&sqlite.readers)
                .await?,
        ),
    };
    Ok((rows.into_iter().collect(), movements))
}

type LevelRow = ((String, String, String), (String, Value));

fn level_row(row: &impl Portable) -> anyhow::Result<LevelRow> {
    Ok((
        (
            row.text("tenant_id")?,
            row.text("warehouse_id")?,
            row.text("product_id")?,
        ),
        (
            row.decimal("on_hand")?.normalize().to_string(),
            row.json("batches")?,
        ),
    ))
}

/// Every row of a read-model table (`schema`, `table`) as text, sorted:
/// for exact comparisons.
pub async fn table_dump(db: &Db, schema: &str, table: &str) -> anyhow::Result<Vec<String>> {
    let name = db.backend().table(schema, table);
    Ok(match db {
        Db::Postgres(pool) => {
            sqlx::query_scalar(&format!(
                "SELECT row_to_json(t)::text FROM {name} t ORDER BY row_to_json(t)::text"
            ))
            .fetch_all(pool)
            .await?
        }
        Db::Sqlite(sqlite) => {
            let columns: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                    .bind(&name)
                    .fetch_all(&sqlite.readers)
                    .await?;
            anyhow::ensure!(!columns.is_empty(), "no table {name}");
            let row = columns
                .iter()
                .map(|column| format!("quote({column})"))
                .collect::<Vec<_>>()
                .join(" || ',' || ");
            sqlx::query_scalar(&format!("SELECT {row} AS r FROM {name} ORDER BY r"))
                .fetch_all(&sqlite.readers)
                .await?
        }
    })
}

/// A projection's checkpoint as stored.
pub async fn checkpoint(db: &Db, name: &str) -> anyhow::Result<Option<Position>> {
    let statuses = karvon_adapters::runner::status(
        db,
        &karvon_adapters::registry::Registry::default().consumers(),
    )
    .await?;
    statuses
        .iter()
        .find(|status| status.name == name)
        .map(|status| {
            status
                .position
                .parse::<Position>()
                .map_err(|error| anyhow::anyhow!("{error:?}"))
        })
        .transpose()
}

/// Appends `events` stock receipts straight into the events table (as the
/// event store would write them) spread over `streams` stock items of
/// warehouse `warehouse`, in one transaction: a fast way to make a feed.
pub async fn append_raw_receipts(
    db: &Db,
    warehouse: &str,
    events: i64,
    streams: i64,
) -> anyhow::Result<()> {
    match db {
        Db::Postgres(pool) => {
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
        }
        Db::Sqlite(sqlite) => {
            sqlx::query(
                "WITH RECURSIVE series(g) AS (SELECT 0 UNION ALL SELECT g + 1 FROM series WHERE g + 1 < $2)
                 INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 SELECT 'StockItem', 'default/' || $1 || '/P' || (g % $3), g / $3 + 1, 'StockReceived', '1',
                        json_object('StockReceived', json_object(
                            'warehouse_id', $1, 'product_id', 'P' || (g % $3), 'qty', CAST((g % 7) + 1 AS TEXT),
                            'batch', CASE WHEN g % 3 = 0 THEN 'B' || (g % 5) END,
                            'expiry_date', CASE WHEN g % 3 = 0 THEN date('2027-01-01', '+' || (g % 5) || ' days') END,
                            'unit_cost', null, 'supplier_id', null, 'purchase_order_id', null)),
                        json_object('tenant_id', 'default', 'source', 'system', 'actor', 'test',
                            'correlation_id', 'bulk',
                            'occurred_at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                   FROM series",
            )
            .bind(warehouse)
            .bind(events)
            .bind(streams)
            .execute(&sqlite.writer)
            .await?;
            db.notify_appended();
        }
    }
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

/// Runs a statement without parameters on either backend.
pub async fn execute(db: &Db, statement: &str) -> anyhow::Result<u64> {
    Ok(match db {
        Db::Postgres(pool) => sqlx::query(statement).execute(pool).await?.rows_affected(),
        Db::Sqlite(sqlite) => sqlx::query(statement)
            .execute(&sqlite.writer)
            .await?
            .rows_affected(),
    })
}

/// The first column of every row of a query (text) on either backend.
pub async fn fetch_strings(db: &Db, query: &str) -> anyhow::Result<Vec<String>> {
    Ok(match db {
        Db::Postgres(pool) => sqlx::query_scalar(query).fetch_all(pool).await?,
        Db::Sqlite(sqlite) => sqlx::query_scalar(query).fetch_all(&sqlite.readers).await?,
    })
}

/// Appends one event straight into the events table, as a buggy or older
/// writer might have stored it; returns its event id. `payload` is stored
/// as given (it need not decode).
pub async fn append_raw_event(
    db: &Db,
    aggregate_type: &str,
    aggregate_id: &str,
    event_type: &str,
    payload: &Value,
) -> anyhow::Result<uuid::Uuid> {
    let metadata = serde_json::json!({
        "tenant_id": aggregate_id.split('/').next().unwrap_or("default"),
        "source": "system", "actor": "test", "correlation_id": "raw",
        "occurred_at": chrono::Utc::now().to_rfc3339(),
    });
    const NEXT: &str = "SELECT coalesce(max(sequence), 0) + 1 FROM events
                         WHERE aggregate_type = $1 AND aggregate_id = $2";
    let id: String = match db {
        Db::Postgres(pool) => {
            let sequence: i64 = sqlx::query_scalar(NEXT)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .fetch_one(pool)
                .await?;
            sqlx::query_scalar(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 VALUES ($1, $2, $3, $4, '1', $5, $6) RETURNING event_id::text",
            )
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(sequence)
            .bind(event_type)
            .bind(payload)
            .bind(&metadata)
            .fetch_one(pool)
            .await?
        }
        Db::Sqlite(sqlite) => {
            let sequence: i64 = sqlx::query_scalar(NEXT)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .fetch_one(&sqlite.writer)
                .await?;
            let id = sqlx::query_scalar(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 VALUES ($1, $2, $3, $4, '1', $5, $6) RETURNING event_id",
            )
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(sequence)
            .bind(event_type)
            .bind(payload.to_string())
            .bind(metadata.to_string())
            .fetch_one(&sqlite.writer)
            .await?;
            db.notify_appended();
            id
        }
    };
    Ok(id.parse()?)
}

/// One consumer's status as the adapters report it.
pub async fn consumer_status(
    db: &Db,
    consumer: &karvon_adapters::runner::Consumer,
) -> anyhow::Result<karvon_adapters::runner::ConsumerStatus> {
    karvon_adapters::runner::status(db, std::slice::from_ref(consumer))
        .await?
        .pop()
        .context("no checkpoint row")
}

/// Waits until `check` holds for the consumer's status.
pub async fn wait_for_status(
    db: &Db,
    consumer: &karvon_adapters::runner::Consumer,
    timeout: Duration,
    check: impl Fn(&karvon_adapters::runner::ConsumerStatus) -> bool,
) -> anyhow::Result<karvon_adapters::runner::ConsumerStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = consumer_status(db, consumer).await?;
        if check(&status) {
            return Ok(status);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} never reached the expected state; last: {status:?}",
            consumer.name()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Metadata of a command a test runs straight on an executor (tenant
/// `default`, source `system`).
pub fn system_metadata() -> karvon_projections::EventMetadata {
    karvon_projections::EventMetadata {
        tenant_id: "default".into(),
        occurred_at: chrono::Utc::now(),
        source: "system".into(),
        actor: "test".into(),
        correlation_id: uuid::Uuid::new_v4().to_string(),
        causation_id: None,
        idempotency_key: None,
        request_hash: None,
        response_id: None,
    }
}

/// Waits until every stored event is settled (PostgreSQL: below every open
/// transaction, so one feed read sees them all).
pub async fn wait_settled(store: &Db) {
    if store.backend() != Backend::Postgres {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let unsettled = fetch_strings(
            store,
            "SELECT CAST(count(*) AS TEXT) FROM events
              WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot())",
        )
        .await
        .expect("count");
        if unsettled == ["0"] {
            return;
        }
        assert!(Instant::now() < deadline, "events never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A NATS server with JetStream of the test's own (the relay's stream name
/// is fixed, so tests cannot share one): a real `nats-server` process on a
/// free port with its store in a fresh directory, killed on drop.
pub struct NatsServer {
    pub port: u16,
    store: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl NatsServer {
    /// A port with nothing listening yet; `start` brings the server up.
    pub fn reserve() -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let store = std::env::temp_dir().join(format!("karvon-nats-{}", uuid::Uuid::now_v7()));
        Ok(Self {
            port,
            store,
            child: None,
        })
    }

    pub async fn started() -> anyhow::Result<Self> {
        let mut server = Self::reserve()?;
        server.start().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the server and waits until it accepts
    /// connections.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let binary = std::env::var("KARVON_TEST_NATS_SERVER")
            .unwrap_or_else(|_| "/usr/sbin/nats-server".to_string());
        let child = std::process::Command::new(&binary)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Kills the server (its store stays for a restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// A `karvon serve` process on a free port (for crash tests: `kill -9`
/// through `child`), with a client holding tenant `default`'s admin key.
pub struct KarvonProcess {
    pub child: std::process::Child,
    pub address: String,
    pub client: reqwest::Client,
}

impl KarvonProcess {
    /// Starts the binary on `db` with `env` added; waits until `/ready`.
    pub async fn start(db: &TestDb, env: &[(&str, String)]) -> Self {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            listener.local_addr().expect("addr").port()
        };
        let mut command = std::process::Command::new(karvon_binary().expect("binary"));
        command
            .arg("serve")
            .env("KARVON_DATABASE_URL", &db.url)
            .env("KARVON_LISTEN", format!("127.0.0.1:{port}"))
            .env("KARVON_LOG", "warn")
            .envs(db.uploads_dir().map(|dir| ("KARVON_UPLOADS_DIR", dir)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("karvon starts");
        let address = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let probe = reqwest::Client::new();
        loop {
            if let Ok(response) = probe.get(format!("{address}/ready")).send().await {
                if response.status() == reqwest::StatusCode::OK {
                    break;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let store = db.db().await.expect("store");
        let token = admin_key(&store, "default").await.expect("key");
        store.close().await;
        Self {
            child,
            address,
            client: authorized_client(&token).expect("client"),
        }
    }

    /// `kill -9`, and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn post(&self, path: &str, body: Value) -> (reqwest::StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.address))
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = response.status();
        (status, response.json().await.unwrap_or_default())
    }
}

impl Drop for KarvonProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Mosquitto broker of a test's own (a random port, unlimited queues for
/// persistent sessions, so a listener that is down misses nothing):
/// `/usr/sbin/mosquitto`, or `KARVON_TEST_MOSQUITTO`.
pub struct MosquittoServer {
    pub port: u16,
    config: std::path::PathBuf,
    child: Option<std::process::Child>,
}

/// What a test broker asks of its clients beyond the defaults.
#[derive(Debug, Default, Clone)]
pub struct BrokerOptions {
    /// Only this username and password may connect.
    pub login: Option<(String, String)>,
    /// TLS only, with the certificate for 127.0.0.1 of this [`TestCa`]
    /// directory.
    pub tls: Option<std::path::PathBuf>,
}

/// A certificate authority of a test's own (openssl), with a server
/// certificate for 127.0.0.1 and localhost; files in a temp directory.
#[derive(Debug)]
pub struct TestCa {
    pub dir: std::path::PathBuf,
}

impl TestCa {
    pub fn generate() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("karvon-ca-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir)?;
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let status = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .context("running openssl")?;
            anyhow::ensure!(status.success(), "openssl {args:?} failed");
            Ok(())
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=karvon test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ])?;
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )?;
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ])?;
        // Mosquitto started as root reads its files as user `mosquitto`.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.join("server.key"),
            std::fs::Permissions::from_mode(0o644),
        )?;
        Ok(Self { dir })
    }

    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl MosquittoServer {
    pub async fn started() -> anyhow::Result<Self> {
        Self::started_with(BrokerOptions::default()).await
    }

    pub async fn started_with(options: BrokerOptions) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config =
            std::env::temp_dir().join(format!("karvon-mosquitto-{}.conf", uuid::Uuid::now_v7()));
        let mut text = format!(
            "listener {port} 127.0.0.1\npersistence false\n\
             max_queued_messages 0\nmax_inflight_messages 0\nlog_type none\n"
        );
        match &options.login {
            Some((username, password)) => {
                let file = config.with_extension("passwd");
                let status = std::process::Command::new("mosquitto_passwd")
                    .args(["-b", "-c"])
                    .arg(&file)
                    .args([username, password])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .context("running mosquitto_passwd")?;
                anyhow::ensure!(status.success(), "mosquitto_passwd failed");
                text.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
            None => text.push_str("allow_anonymous true\n"),
        }
        if let Some(dir) = &options.tls {
            text.push_str(&format!(
                "cafile {}\ncertfile {}\nkeyfile {}\n",
                dir.join("ca.pem").display(),
                dir.join("server.pem").display(),
                dir.join("server.key").display()
            ));
        }
        std::fs::write(&config, text)?;
        let binary = std::env::var("KARVON_TEST_MOSQUITTO")
            .unwrap_or_else(|_| "/usr/sbin/mosquitto".to_string());
        let child = std::process::Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let server = Self {
            port,
            config,
            child: Some(child),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "mosquitto did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for MosquittoServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(self.config.with_extension("passwd"));
    }
}

/// A figure of process `pid` from `/proc/<pid>/status` in bytes: `VmRSS`
/// (resident now) or `VmHWM` (the peak so far).
pub fn process_memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        * 1024
}

/// Polls an import job's status (`/api/v1/integration/sync/status/…`)
/// until it completed or failed (at most 4 minutes); its last status.
pub async fn finished_job(client: &reqwest::Client, base: &str, task: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        if let Ok(response) = client
            .get(format!("{base}/api/v1/integration/sync/status/{task}/"))
            .send()
            .await
        {
            let body: Value = response.json().await.unwrap_or_default();
            let status = &body["data"]["status"];
            if status == "completed" || status == "error" {
                return body["data"].clone();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {task} did not finish"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
