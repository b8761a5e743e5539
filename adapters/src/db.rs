//! The storage seam: one handle, [`Db`], over the two event-store backends.
//!
//! Everything above this module (the command executor, the feed, the
//! projection runner, the read models and their queries) is written once
//! against `Db`, [`Conn`] and [`Portable`]. Where the SQL itself differs, the
//! two statements sit side by side in a `match` on the backend, right where
//! they are used; the logic around them is shared.
//!
//! - **PostgreSQL** (`postgres://…`): many instances, advisory-lock
//!   leadership, LISTEN/NOTIFY, row-level security.
//! - **SQLite** (`sqlite://…`, the zero-configuration default): one file in
//!   WAL mode. All writes go through a single writer connection, so they are
//!   serialised and the feed is simply `global_position` (rowid) order;
//!   reads use a pool of read-only connections. `synchronous = FULL`: a
//!   command is acknowledged only once its commit is on disk.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgRow;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{PgConnection, PgPool, Row, SqliteConnection, SqlitePool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::StorageError;
use crate::postgres::{self, PgSettings};

/// The SQLite schema, embedded in the binary.
pub static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

/// Which event store a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }

    /// The name of a read-model table: PostgreSQL gives each read model a
    /// schema, SQLite (one namespace) a name prefix.
    pub fn table(self, schema: &str, table: &str) -> String {
        match self {
            Backend::Postgres => format!("{schema}.{table}"),
            Backend::Sqlite => format!("{schema}_{table}"),
        }
    }

    /// The current time, as this backend stores times.
    pub fn now(self) -> &'static str {
        match self {
            Backend::Postgres => "now()",
            Backend::Sqlite => "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        }
    }

    /// A parameter bound as text, read as the backend's transaction id
    /// (`xid8` on PostgreSQL; SQLite's integer column takes the text).
    pub fn xid_param(self, param: &str) -> String {
        match self {
            Backend::Postgres => format!("{param}::text::xid8"),
            Backend::Sqlite => param.to_string(),
        }
    }

    /// A parameter bound as text, read as a UUID (SQLite keeps UUIDs as text).
    pub fn uuid_param(self, param: &str) -> String {
        match self {
            Backend::Postgres => format!("{param}::text::uuid"),
            Backend::Sqlite => param.to_string(),
        }
    }

    /// A transaction-id column read as text (see `store::row_position`).
    pub fn xid_text(self, column: &str) -> String {
        match self {
            Backend::Postgres => format!("{column}::text"),
            Backend::Sqlite => format!("CAST({column} AS TEXT)"),
        }
    }

    /// Feed order over the events table aliased `alias` (SQLite has no
    /// transaction ids: its positions are commit order).
    pub fn feed_order(self, alias: &str) -> String {
        match self {
            Backend::Postgres => format!("{alias}.transaction_id, {alias}.global_position"),
            Backend::Sqlite => format!("{alias}.global_position"),
        }
    }

    /// A nullable parameter's type, where the backend cannot infer it from
    /// `$n IS NULL` (PostgreSQL needs `$n::text`).
    pub fn text_param(self, param: &str) -> String {
        match self {
            Backend::Postgres => format!("{param}::text"),
            Backend::Sqlite => param.to_string(),
        }
    }

    /// Case-insensitive "contains" of a pattern made by [`like_pattern`].
    pub fn contains(self, column: &str, pattern: &str) -> String {
        match self {
            Backend::Postgres => format!("{column} ILIKE {pattern}"),
            // SQLite's LIKE is case-insensitive for ASCII; the escape is named.
            Backend::Sqlite => format!("{column} LIKE {pattern} ESCAPE '\\'"),
        }
    }

    /// A decimal column or expression as a number to compare (SQLite keeps
    /// decimals as text; it compares them as REAL).
    pub fn numeric(self, expression: &str) -> String {
        match self {
            Backend::Postgres => expression.to_string(),
            Backend::Sqlite => format!("CAST({expression} AS REAL)"),
        }
    }

    /// The elements of a JSON array column as rows named `alias`.
    pub fn json_elements(self, column: &str, alias: &str) -> String {
        match self {
            Backend::Postgres => format!("jsonb_array_elements({column}) {alias}"),
            Backend::Sqlite => format!("json_each({column}) {alias}"),
        }
    }

    /// The strings of a JSON array parameter (`["a","b"]`) as a subquery,
    /// for `column IN (…)`.
    pub fn text_list(self, param: &str) -> String {
        match self {
            Backend::Postgres => format!("SELECT jsonb_array_elements_text({param}::jsonb)"),
            Backend::Sqlite => format!("SELECT value FROM json_each({param})"),
        }
    }

    /// A text field of a JSON object column.
    pub fn json_text(self, column: &str, field: &str) -> String {
        match self {
            Backend::Postgres => format!("({column}->>'{field}')"),
            Backend::Sqlite => format!("json_extract({column}, '$.{field}')"),
        }
    }

    /// A field of an element from [`Backend::json_elements`], as a number.
    pub fn json_number(self, alias: &str, field: &str) -> String {
        match self {
            Backend::Postgres => format!("({alias}->>'{field}')::numeric"),
            Backend::Sqlite => format!("CAST(json_extract({alias}.value, '$.{field}') AS REAL)"),
        }
    }

    /// A field of an element from [`Backend::json_elements`], as a date.
    pub fn json_date(self, alias: &str, field: &str) -> String {
        match self {
            Backend::Postgres => format!("({alias}->>'{field}')::date"),
            Backend::Sqlite => format!("json_extract({alias}.value, '$.{field}')"),
        }
    }

    /// The events table.
    pub fn events(self) -> &'static str {
        match self {
            Backend::Postgres => "public.events",
            Backend::Sqlite => "events",
        }
    }

    /// The name of an index on a read-model table: PostgreSQL places it in
    /// its table's schema, SQLite needs it unique in the file.
    pub fn index(self, schema: &str, index: &str) -> String {
        match self {
            Backend::Postgres => index.to_string(),
            Backend::Sqlite => format!("{schema}_{index}"),
        }
    }
}

/// A connection to the event store and read models.
#[derive(Clone, Debug)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqliteDb),
}

#[derive(Clone, Debug)]
pub struct SqliteDb {
    /// The one connection every write goes through.
    pub writer: SqlitePool,
    /// Read-only connections for queries.
    pub readers: SqlitePool,
    /// Counts this process's appends, so its feed consumers wake at once
    /// (SQLite has no NOTIFY; other processes are found by polling).
    appended: Arc<watch::Sender<u64>>,
    /// Counts checkpoint moves, so read-your-writes waiters wake at once.
    checkpoints: Arc<watch::Sender<u64>>,
}

impl Db {
    /// Opens the store named by `url` (`postgres://…` or `sqlite://path`),
    /// creating the database or file when missing.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            postgres::ensure_database(url).await?;
            let pool = postgres::connect(&PgSettings {
                url: url.to_string(),
                max_connections,
            })
            .await?;
            Ok(Db::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            Ok(Db::Sqlite(open_sqlite(url, max_connections).await?))
        } else {
            Err(StorageError::Config(format!(
                "database URL must start with postgres:// or sqlite:// (got {:?})",
                url.split(':').next().unwrap_or_default()
            )))
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Postgres(_) => Backend::Postgres,
            Db::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Applies the backend's embedded migrations.
    pub async fn migrate(&self) -> Result<(), StorageError> {
        match self {
            Db::Postgres(pool) => postgres::migrate(pool).await,
            Db::Sqlite(db) => Ok(SQLITE_MIGRATOR.run(&db.writer).await?),
        }
    }

    /// True when every embedded migration has been applied (for `/ready`).
    pub async fn migrations_applied(&self) -> Result<bool, StorageError> {
        let (applied, migrator): (Vec<i64>, &Migrator) = match self {
            Db::Postgres(pool) => (
                sqlx::query_scalar(APPLIED_MIGRATIONS)
                    .fetch_all(pool)
                    .await?,
                &postgres::MIGRATOR,
            ),
            Db::Sqlite(db) => (
                sqlx::query_scalar(APPLIED_MIGRATIONS)
                    .fetch_all(&db.readers)
                    .await?,
                &SQLITE_MIGRATOR,
            ),
        };
        Ok(migrator
            .iter()
            .all(|migration| applied.contains(&migration.version)))
    }

    /// A handle for bookkeeping whose loss in a crash is harmless
    /// (rate-limit counters): on PostgreSQL a small pool whose commits do
    /// not wait for the WAL flush; on SQLite the same writer.
    pub async fn bookkeeping(&self, url: &str, max_connections: u32) -> Result<Db, StorageError> {
        match self {
            Db::Postgres(_) => Ok(Db::Postgres(
                postgres::connect_bookkeeping(&PgSettings {
                    url: url.to_string(),
                    max_connections,
                })
                .await?,
            )),
            Db::Sqlite(_) => Ok(self.clone()),
        }
    }

    /// Tells this process's feed readers that events were appended.
    pub fn notify_appended(&self) {
        if let Db::Sqlite(db) = self {
            db.appended
                .send_modify(|appends| *appends = appends.wrapping_add(1));
        }
    }

    /// Tells this process's read-your-writes waiters that a checkpoint
    /// moved (PostgreSQL: a trigger notifies every process instead).
    pub fn notify_checkpoint(&self) {
        if let Db::Sqlite(db) = self {
            db.checkpoints
                .send_modify(|moves| *moves = moves.wrapping_add(1));
        }
    }

    /// This process's appends and checkpoint moves on SQLite (`None` on
    /// PostgreSQL, where [`crate::runner::Wakeup`] listens for NOTIFY).
    pub(crate) fn local_wakeups(&self) -> Option<(watch::Receiver<u64>, watch::Receiver<u64>)> {
        match self {
            Db::Postgres(_) => None,
            Db::Sqlite(db) => Some((db.appended.subscribe(), db.checkpoints.subscribe())),
        }
    }

    pub async fn close(&self) {
        match self {
            Db::Postgres(pool) => pool.close().await,
            Db::Sqlite(db) => {
                db.readers.close().await;
                db.writer.close().await;
            }
        }
    }
}

const APPLIED_MIGRATIONS: &str =
    "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";

async fn open_sqlite(url: &str, max_connections: u32) -> Result<SqliteDb, StorageError> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true);
    if url.contains(":memory:") || url.contains("mode=memory") {
        // The readers would each see an empty database of their own.
        return Err(StorageError::Config(
            "an in-memory SQLite database is not supported; name a file (sqlite://./karvon-data/karvon.db)"
                .to_string(),
        ));
    }
    create_private(Path::new(options.get_filename()))?;
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.clone())
        .await?;
    let readers = SqlitePoolOptions::new()
        .max_connections(max_connections.clamp(1, 8))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.read_only(true))
        .await?;
    Ok(SqliteDb {
        writer,
        readers,
        appended: Arc::new(watch::channel(0).0),
        checkpoints: Arc::new(watch::channel(0).0),
    })
}

/// Creates the database file and its directory when missing, readable by
/// the owner only (the file holds credentials' hashes and every event;
/// SQLite gives its `-wal` and `-shm` files the same permissions).
fn create_private(file: &Path) -> Result<(), StorageError> {
    let failed = |path: &Path, error: std::io::Error| {
        StorageError::Config(format!("creating {}: {error}", path.display()))
    };
    if let Some(parent) = file
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        if !parent.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(parent)
                .map_err(|error| failed(parent, error))?;
        }
    }
    if !file.exists() {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(file) {
            Ok(_) => {}
            // Another process made it meanwhile.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(failed(file, error)),
        }
    }
    Ok(())
}

/// Runs one expression for whichever backend a `&mut Conn` holds, with
/// `$c` bound to that backend's `&mut &mut …Connection`. sqlx query
/// builders are typed per backend; where the text and the binds are the
/// same, this writes them once.
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::db::Conn::Postgres($c) => $body,
            $crate::db::Conn::Sqlite($c) => $body,
        }
    };
}
pub(crate) use on_conn;

/// Runs one expression with `$pool` bound to the pool for the job:
/// PostgreSQL's pool, or SQLite's writer (`write`) or readers (`read`).
macro_rules! on_pool {
    ($db:expr, write, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($pool) => $body,
            $crate::db::Db::Sqlite(sqlite) => {
                let $pool = &sqlite.writer;
                $body
            }
        }
    };
    ($db:expr, read, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Postgres($pool) => $body,
            $crate::db::Db::Sqlite(sqlite) => {
                let $pool = &sqlite.readers;
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// A backend connection seen as a [`Conn`].
pub trait AsConn {
    fn as_conn(&mut self) -> Conn<'_>;
    /// What opens a write transaction: SQLite takes its write lock at once,
    /// so a transaction that reads first cannot fail to upgrade later.
    const BEGIN_WRITE: &'static str;
}

impl AsConn for PgConnection {
    fn as_conn(&mut self) -> Conn<'_> {
        Conn::Postgres(self)
    }
    const BEGIN_WRITE: &'static str = "BEGIN";
}

impl AsConn for SqliteConnection {
    fn as_conn(&mut self) -> Conn<'_> {
        Conn::Sqlite(self)
    }
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
}

/// A connection (usually inside a transaction) of either backend.
pub enum Conn<'c> {
    Postgres(&'c mut PgConnection),
    Sqlite(&'c mut SqliteConnection),
}

impl Conn<'_> {
    /// Runs a statement without parameters (DDL and the like).
    pub async fn execute(&mut self, statement: &str) -> Result<(), StorageError> {
        on_conn!(self, c => {
            sqlx::query(statement).execute(&mut **c).await?;
        });
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        match self {
            Conn::Postgres(_) => Backend::Postgres,
            Conn::Sqlite(_) => Backend::Sqlite,
        }
    }
}

/// Reads a column the same way from either backend's row, whatever type
/// the backend stores it as (SQLite keeps decimals, JSON and ids as text).
pub trait Portable {
    fn text(&self, column: &str) -> Result<String, StorageError>;
    fn opt_text(&self, column: &str) -> Result<Option<String>, StorageError>;
    fn int(&self, column: &str) -> Result<i64, StorageError>;
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StorageError>;
    fn opt_flag(&self, column: &str) -> Result<Option<bool>, StorageError>;
    fn opt_json(&self, column: &str) -> Result<Option<serde_json::Value>, StorageError>;
    fn date(&self, column: &str) -> Result<NaiveDate, StorageError>;
    fn opt_date(&self, column: &str) -> Result<Option<NaiveDate>, StorageError>;
    fn flag(&self, column: &str) -> Result<bool, StorageError>;
    fn decimal(&self, column: &str) -> Result<Decimal, StorageError>;
    fn opt_decimal(&self, column: &str) -> Result<Option<Decimal>, StorageError>;
    fn time(&self, column: &str) -> Result<DateTime<Utc>, StorageError>;
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StorageError>;
    fn json(&self, column: &str) -> Result<serde_json::Value, StorageError>;
    fn uuid(&self, column: &str) -> Result<Uuid, StorageError>;
    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>, StorageError>;
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StorageError>;
    /// A list of strings (`text[]` in PostgreSQL, a JSON array in SQLite).
    fn strings(&self, column: &str) -> Result<Vec<String>, StorageError>;
}

impl Portable for PgRow {
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StorageError> {
        match self.try_get::<Option<i64>, _>(column) {
            Ok(value) => Ok(value),
            Err(error @ sqlx::Error::ColumnDecode { .. }) => self
                .try_get::<Option<i32>, _>(column)
                .map(|value| value.map(i64::from))
                .map_err(|_| error.into()),
            Err(error) => Err(error.into()),
        }
    }
    fn opt_flag(&self, column: &str) -> Result<Option<bool>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn opt_json(&self, column: &str) -> Result<Option<serde_json::Value>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn date(&self, column: &str) -> Result<NaiveDate, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn opt_date(&self, column: &str) -> Result<Option<NaiveDate>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn text(&self, column: &str) -> Result<String, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64, StorageError> {
        // bigint or integer columns alike.
        match self.try_get::<i64, _>(column) {
            Ok(value) => Ok(value),
            Err(error @ sqlx::Error::ColumnDecode { .. }) => self
                .try_get::<i32, _>(column)
                .map(i64::from)
                .map_err(|_| error.into()),
            Err(error) => Err(error.into()),
        }
    }
    fn flag(&self, column: &str) -> Result<bool, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn decimal(&self, column: &str) -> Result<Decimal, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn opt_decimal(&self, column: &str) -> Result<Option<Decimal>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn time(&self, column: &str) -> Result<DateTime<Utc>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn json(&self, column: &str) -> Result<serde_json::Value, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn uuid(&self, column: &str) -> Result<Uuid, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn strings(&self, column: &str) -> Result<Vec<String>, StorageError> {
        Ok(self.try_get(column)?)
    }
}

impl Portable for SqliteRow {
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn opt_flag(&self, column: &str) -> Result<Option<bool>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn opt_json(&self, column: &str) -> Result<Option<serde_json::Value>, StorageError> {
        self.opt_text(column)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|error| {
                    StorageError::Corrupt(format!("{column} is not JSON: {error}"))
                })
            })
            .transpose()
    }
    fn date(&self, column: &str) -> Result<NaiveDate, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn opt_date(&self, column: &str) -> Result<Option<NaiveDate>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn text(&self, column: &str) -> Result<String, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn int(&self, column: &str) -> Result<i64, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn flag(&self, column: &str) -> Result<bool, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn decimal(&self, column: &str) -> Result<Decimal, StorageError> {
        parse_decimal(column, &self.text(column)?)
    }
    fn opt_decimal(&self, column: &str) -> Result<Option<Decimal>, StorageError> {
        self.opt_text(column)?
            .map(|text| parse_decimal(column, &text))
            .transpose()
    }
    fn time(&self, column: &str) -> Result<DateTime<Utc>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn json(&self, column: &str) -> Result<serde_json::Value, StorageError> {
        let text = self.text(column)?;
        serde_json::from_str(&text)
            .map_err(|error| StorageError::Corrupt(format!("{column} is not JSON: {error}")))
    }
    fn uuid(&self, column: &str) -> Result<Uuid, StorageError> {
        let text = self.text(column)?;
        Uuid::parse_str(&text)
            .map_err(|_| StorageError::Corrupt(format!("{column} {text:?} is not a UUID")))
    }
    fn opt_uuid(&self, column: &str) -> Result<Option<Uuid>, StorageError> {
        self.opt_text(column)?
            .map(|text| {
                Uuid::parse_str(&text)
                    .map_err(|_| StorageError::Corrupt(format!("{column} {text:?} is not a UUID")))
            })
            .transpose()
    }
    fn bytes(&self, column: &str) -> Result<Vec<u8>, StorageError> {
        Ok(self.try_get(column)?)
    }
    fn strings(&self, column: &str) -> Result<Vec<String>, StorageError> {
        serde_json::from_value(self.json(column)?)
            .map_err(|error| StorageError::Corrupt(format!("{column}: {error}")))
    }
}

fn parse_decimal(column: &str, text: &str) -> Result<Decimal, StorageError> {
    Decimal::from_str_exact(text)
        .or_else(|_| Decimal::from_scientific(text))
        .map_err(|_| StorageError::Corrupt(format!("{column} {text:?} is not a decimal")))
}

/// A time as sqlx writes it into SQLite, for rows built as JSON.
pub(crate) fn sqlite_time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

/// A list of strings as SQLite stores it (a JSON array).
pub(crate) fn json_list(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

/// A `LIKE` pattern matching `text` anywhere, its wildcards escaped with `\`.
pub fn like_pattern(text: &str) -> String {
    format!(
        "%{}%",
        text.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    )
}
