//! The projection runner: the one place events leave the store for read
//! models and reactions.
//!
//! Each feed consumer (a [`FeedHandler`]) has a checkpoint row in
//! `projection_checkpoints`. One step is one transaction: lock the
//! checkpoint row, read the next settled batch after it, let the handler
//! apply it, move the checkpoint, commit. A crash anywhere rolls the whole
//! step back, so no event is applied twice or skipped.
//!
//! Only one instance runs a consumer at a time: the runner holds a session
//! advisory lock on its own connection, and every step runs on that same
//! connection, so losing the connection loses the lock and rolls back the
//! step in hand. Standbys retry the lock and take over.
//!
//! Rebuild replays from position zero into a fresh schema beside the live
//! one, then, in one transaction holding the live checkpoint row, catches
//! up and swaps the schemas; queries answer from the old tables until then.
//!
//! On SQLite the same steps run on the single writer connection inside
//! `BEGIN IMMEDIATE`: writes are serialised, so no leadership lock is
//! needed, and an in-process notification replaces LISTEN/NOTIFY. A
//! handler without a read model (a process manager, whose commands need
//! that writer themselves) reads its batch, reacts, then moves its
//! checkpoint in a second transaction; its reactions are idempotent, so a
//! crash in between repeats them harmlessly.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use karvon_projections::{Position, PositionToken};
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, SqlitePool};
use tokio::sync::{Notify, watch};

use crate::StorageError;
use crate::db::{AsConn, Backend, Conn, Db, Portable, on_conn};
use crate::feed::{self, FeedEvent};
use crate::store::row_position;

/// The channel the events table notifies on append.
pub const EVENTS_CHANNEL: &str = "karvon_events";

#[async_trait::async_trait]
pub trait FeedHandler: Send + Sync + 'static {
    /// The checkpoint name; also the projection's name in the CLI and API.
    fn name(&self) -> &'static str;

    /// The schema of the read model this handler owns; `None` for handlers
    /// whose effects are elsewhere (they cannot be rebuilt).
    fn schema(&self) -> Option<&'static str> {
        None
    }

    /// The read model's tables (unqualified), for backends that swap a
    /// rebuild table by table.
    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    /// Creates the read model's tables in `schema` when missing; name them
    /// with [`Backend::table`] and [`Backend::index`].
    async fn create_tables(&self, _conn: &mut Conn<'_>, _schema: &str) -> Result<(), StorageError> {
        Ok(())
    }

    /// Forgets any state cached between steps. The runner calls it whenever
    /// the stored checkpoint is not the one it last committed (a failed
    /// step, a restart, a rebuild that swapped the tables).
    fn reset(&self) {}

    /// Applies a batch inside the step's transaction, to the tables of
    /// `schema` (the live one or a rebuild's). State cached in memory is
    /// only valid once the step commits; the runner resets it otherwise.
    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError>;
}

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub batch_size: i64,
    /// Fallback wake-up when no notification arrives (e.g. a long open
    /// transaction held the horizon back).
    pub poll_interval: Duration,
    /// How often a standby retries the leadership lock.
    pub standby_interval: Duration,
    /// Least time between the starts of two small steps: bounds the step
    /// rate (and so its per-transaction overhead) under steady appends, at
    /// the cost of that much read-your-writes latency under load.
    pub min_step_interval: Duration,
    /// Pause after an error before reconnecting.
    pub retry_backoff: Duration,
    /// Names this instance in `pg_stat_activity` (`karvon-runner:<name>:<instance>`).
    pub instance: String,
    /// Fault injection for crash tests: a pause between applying a batch and
    /// writing its checkpoint, inside the step's transaction. Zero in
    /// production.
    pub pause_before_checkpoint: Duration,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_millis(250),
            standby_interval: Duration::from_millis(500),
            min_step_interval: Duration::from_millis(20),
            retry_backoff: Duration::from_secs(1),
            instance: std::process::id().to_string(),
            pause_before_checkpoint: Duration::ZERO,
        }
    }
}

pub struct Runner {
    db: Db,
    handler: Arc<dyn FeedHandler>,
    settings: RunnerSettings,
}

impl Runner {
    pub fn new(db: Db, handler: Arc<dyn FeedHandler>, settings: RunnerSettings) -> Self {
        Self {
            db,
            handler,
            settings,
        }
    }

    /// Runs until `shutdown` turns true; a step in hand is finished first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = self.handler.name();
        while !*shutdown.borrow() {
            match self.lead(&mut shutdown).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(projection = name, %error, "projection runner failed; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(self.settings.retry_backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
        tracing::info!(projection = name, "projection runner stopped");
    }

    async fn lead(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), StorageError> {
        let name = self.handler.name();
        let Some(mut session) = Session::lead(&self.db, name, &self.settings, shutdown).await?
        else {
            return Ok(());
        };
        tracing::info!(projection = name, "projection runner is active");
        session.prepare(self.handler.as_ref()).await?;
        let mut memory = StepMemory::default();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let started = Instant::now();
            let applied = session
                .step(
                    self.handler.as_ref(),
                    name,
                    self.handler.schema(),
                    &self.settings,
                    &mut memory,
                )
                .await?;
            if applied as i64 >= self.settings.batch_size {
                continue;
            }
            tokio::select! {
                () = session.appended(self.settings.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
            // Under a stream of appends, wake at most once per interval so a
            // step carries many events instead of one; when quiet, the
            // notification is served at once.
            let since = started.elapsed();
            if since < self.settings.min_step_interval {
                tokio::time::sleep(self.settings.min_step_interval - since).await;
            }
        }
    }
}

/// An active runner's hold on its backend.
enum Session {
    /// A dedicated connection holding the advisory lock, and a listener.
    Postgres {
        conn: PgConnection,
        listener: Box<PgListener>,
    },
    /// The writer pool (steps take its one connection) and the readers.
    Sqlite {
        writer: SqlitePool,
        readers: SqlitePool,
        appended: Arc<Notify>,
    },
}

impl Session {
    /// Waits for leadership; `None` when shut down first.
    async fn lead(
        db: &Db,
        name: &str,
        settings: &RunnerSettings,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Self>, StorageError> {
        match db {
            Db::Postgres(pool) => {
                let application_name = format!("karvon-runner:{name}:{}", settings.instance);
                let mut conn = connect(pool, &application_name).await?;
                while !try_lock(&mut conn, name).await? {
                    tokio::select! {
                        _ = tokio::time::sleep(settings.standby_interval) => {}
                        _ = shutdown.changed() => return Ok(None),
                    }
                    if *shutdown.borrow() {
                        return Ok(None);
                    }
                }
                let mut listener = PgListener::connect_with(pool).await?;
                listener.listen(EVENTS_CHANNEL).await?;
                Ok(Some(Session::Postgres {
                    conn,
                    listener: Box::new(listener),
                }))
            }
            Db::Sqlite(sqlite) => Ok(Some(Session::Sqlite {
                writer: sqlite.writer.clone(),
                readers: sqlite.readers.clone(),
                appended: db.appended().unwrap_or_default(),
            })),
        }
    }

    async fn prepare(&mut self, handler: &dyn FeedHandler) -> Result<(), StorageError> {
        let mut pooled;
        let mut conn = match self {
            Session::Postgres { conn, .. } => Conn::Postgres(conn),
            Session::Sqlite { writer, .. } => {
                pooled = writer.acquire().await?;
                Conn::Sqlite(&mut pooled)
            }
        };
        prepare(&mut conn, handler).await
    }

    /// Resolves on an append notification, or after `poll` at the latest.
    async fn appended(&mut self, poll: Duration) {
        match self {
            Session::Postgres { listener, .. } => {
                tokio::select! {
                    notification = listener.recv() => {
                        if let Err(error) = notification {
                            tracing::debug!(%error, "listener error; polling");
                            tokio::time::sleep(poll).await;
                        }
                    }
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            Session::Sqlite { appended, .. } => {
                tokio::select! {
                    () = appended.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
        }
    }

    async fn step(
        &mut self,
        handler: &dyn FeedHandler,
        checkpoint: &str,
        schema: Option<&str>,
        settings: &RunnerSettings,
        memory: &mut StepMemory,
    ) -> Result<usize, StorageError> {
        let mut pooled;
        let mut conn = match self {
            Session::Postgres { conn, .. } => Conn::Postgres(conn),
            Session::Sqlite {
                writer, readers, ..
            } if schema.is_none() => {
                return react_step(writer, readers, handler, checkpoint, settings).await;
            }
            Session::Sqlite { writer, .. } => {
                pooled = writer.acquire().await?;
                Conn::Sqlite(&mut pooled)
            }
        };
        step(&mut conn, handler, checkpoint, schema, settings, memory).await
    }
}

/// Opens a dedicated connection (not from the pool: it holds the lock).
async fn connect(pool: &PgPool, application_name: &str) -> Result<PgConnection, StorageError> {
    let options: PgConnectOptions = (*pool.connect_options())
        .clone()
        .application_name(application_name);
    Ok(options.connect().await?)
}

async fn try_lock(conn: &mut PgConnection, name: &str) -> Result<bool, StorageError> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("karvon.feed.{name}"))
        .fetch_one(conn)
        .await?;
    Ok(locked)
}

/// Creates a consumer's checkpoint row and live tables when missing; the
/// application does this for every consumer before it serves queries.
pub async fn prepare_consumer(db: &Db, handler: &dyn FeedHandler) -> Result<(), StorageError> {
    match db {
        Db::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            prepare(&mut Conn::Postgres(&mut conn), handler).await
        }
        Db::Sqlite(sqlite) => {
            let mut conn = sqlite.writer.acquire().await?;
            prepare(&mut Conn::Sqlite(&mut conn), handler).await
        }
    }
}

async fn prepare(conn: &mut Conn<'_>, handler: &dyn FeedHandler) -> Result<(), StorageError> {
    ensure_checkpoint(conn, handler.name()).await?;
    let Some(schema) = handler.schema() else {
        return Ok(());
    };
    on_conn!(conn, c => {
        let mut tx = c.begin_with(begin_write(&**c)).await?;
        let mut tx_conn = tx.as_conn();
        if tx_conn.backend() == Backend::Postgres {
            // Concurrent CREATE … IF NOT EXISTS can still collide in the
            // catalogue; instances starting together take turns.
            tx_conn
                .execute("SELECT pg_advisory_xact_lock(hashtextextended('karvon.prepare', 0))")
                .await?;
            tx_conn
                .execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?;
        }
        handler.create_tables(&mut tx_conn, schema).await?;
        tx.commit().await?;
    });
    Ok(())
}

const ENSURE_CHECKPOINT: &str =
    "INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";

async fn ensure_checkpoint(conn: &mut Conn<'_>, name: &str) -> Result<(), StorageError> {
    on_conn!(conn, c => {
        sqlx::query(ENSURE_CHECKPOINT).bind(name).execute(&mut **c).await?;
    });
    Ok(())
}

async fn delete_checkpoint(conn: &mut Conn<'_>, name: &str) -> Result<(), StorageError> {
    const DELETE: &str = "DELETE FROM projection_checkpoints WHERE name = $1";
    on_conn!(conn, c => {
        sqlx::query(DELETE).bind(name).execute(&mut **c).await?;
    });
    Ok(())
}

/// The stored checkpoint (position, generation), locked for this
/// transaction on PostgreSQL (SQLite's write lock already covers it).
async fn read_checkpoint(conn: &mut Conn<'_>, name: &str) -> Result<(Position, i64), StorageError> {
    let select = match conn.backend() {
        Backend::Postgres => {
            "SELECT transaction_id::text AS txid, position, generation
               FROM projection_checkpoints WHERE name = $1 FOR UPDATE"
        }
        Backend::Sqlite => {
            "SELECT CAST(transaction_id AS TEXT) AS txid, position, generation
               FROM projection_checkpoints WHERE name = $1"
        }
    };
    on_conn!(conn, c => {
        let row = sqlx::query(select).bind(name).fetch_one(&mut **c).await?;
        Ok((row_position(&row, "position")?, row.int("generation")?))
    })
}

/// Moves a checkpoint to `position` after `seen` more events.
async fn write_checkpoint(
    conn: &mut Conn<'_>,
    name: &str,
    position: Position,
    seen: usize,
) -> Result<(), StorageError> {
    // The transaction id goes as text: PostgreSQL casts it to xid8, SQLite's
    // integer column takes it as a number.
    let update = match conn.backend() {
        Backend::Postgres => {
            "UPDATE projection_checkpoints
                SET transaction_id = $2::text::xid8, position = $3,
                    events_seen = events_seen + $4, updated_at = now()
              WHERE name = $1"
        }
        Backend::Sqlite => {
            "UPDATE projection_checkpoints
                SET transaction_id = $2, position = $3, events_seen = events_seen + $4,
                    updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
              WHERE name = $1"
        }
    };
    on_conn!(conn, c => {
        sqlx::query(update)
        .bind(name)
        .bind(position.transaction_id.to_string())
        .bind(position.global_position)
        .bind(seen as i64)
        .execute(&mut **c)
        .await?;
    });
    Ok(())
}

/// The statement that opens a write transaction on `conn`'s backend.
fn begin_write<C: AsConn>(_conn: &C) -> &'static str {
    C::BEGIN_WRITE
}

/// What a runner remembers between steps: the checkpoint it last
/// committed. A handler's cache is trusted only while the stored checkpoint
/// is still that one.
#[derive(Debug, Default)]
pub struct StepMemory {
    /// Checkpoint position and generation of the last committed step.
    last_committed: Option<(Position, i64)>,
}

/// One step in its own transaction; returns how many events it applied.
pub async fn step(
    conn: &mut Conn<'_>,
    handler: &dyn FeedHandler,
    checkpoint: &str,
    schema: Option<&str>,
    settings: &RunnerSettings,
    memory: &mut StepMemory,
) -> Result<usize, StorageError> {
    let outcome = on_conn!(conn, c => {
        async {
            let mut tx = c.begin_with(begin_write(&**c)).await?;
            let stepped =
                step_within(&mut tx.as_conn(), handler, checkpoint, schema, settings, memory)
                    .await?;
            tx.commit().await?;
            Ok::<_, StorageError>(stepped)
        }
        .await
    });
    match outcome {
        Ok((applied, position)) => {
            memory.last_committed = Some(position);
            Ok(applied)
        }
        Err(error) => {
            memory.last_committed = None;
            handler.reset();
            Err(error)
        }
    }
}

/// One step inside a transaction the caller owns.
async fn step_within(
    tx: &mut Conn<'_>,
    handler: &dyn FeedHandler,
    checkpoint: &str,
    schema: Option<&str>,
    settings: &RunnerSettings,
    memory: &StepMemory,
) -> Result<(usize, (Position, i64)), StorageError> {
    let (after, generation) = read_checkpoint(tx, checkpoint).await?;
    if memory.last_committed != Some((after, generation)) {
        handler.reset();
    }
    let events = feed::read_batch(tx, after, settings.batch_size).await?;
    let Some(last) = events.last() else {
        return Ok((0, (after, generation)));
    };
    handler
        .apply(tx, schema.unwrap_or_default(), &events)
        .await?;
    if !settings.pause_before_checkpoint.is_zero() {
        tokio::time::sleep(settings.pause_before_checkpoint).await;
    }
    write_checkpoint(tx, checkpoint, last.position, events.len()).await?;
    metrics::counter!("karvon_projection_events_total", "projection" => handler.name().to_string())
        .increment(events.len() as u64);
    Ok((events.len(), (last.position, generation)))
}

/// A SQLite step of a handler whose effects are commands of its own (they
/// need the writer): read the batch, react, then move the checkpoint.
async fn react_step(
    writer: &SqlitePool,
    readers: &SqlitePool,
    handler: &dyn FeedHandler,
    checkpoint: &str,
    settings: &RunnerSettings,
) -> Result<usize, StorageError> {
    let mut reader = readers.begin().await?;
    let (after, _) = read_checkpoint(&mut Conn::Sqlite(&mut reader), checkpoint).await?;
    let events =
        feed::read_batch(&mut Conn::Sqlite(&mut reader), after, settings.batch_size).await?;
    let Some(last) = events.last() else {
        reader.rollback().await?;
        return Ok(0);
    };
    handler
        .apply(&mut Conn::Sqlite(&mut reader), "", &events)
        .await?;
    reader.rollback().await?;
    if !settings.pause_before_checkpoint.is_zero() {
        tokio::time::sleep(settings.pause_before_checkpoint).await;
    }
    let mut tx = writer.begin_with("BEGIN IMMEDIATE").await?;
    let (now, _) = read_checkpoint(&mut Conn::Sqlite(&mut tx), checkpoint).await?;
    if now != after {
        // Another process moved it meanwhile; its reactions were the same.
        return Ok(0);
    }
    write_checkpoint(
        &mut Conn::Sqlite(&mut tx),
        checkpoint,
        last.position,
        events.len(),
    )
    .await?;
    tx.commit().await?;
    Ok(events.len())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub position: Position,
    pub elapsed: Duration,
}

/// Rebuilds running in this process (SQLite has no advisory locks; one
/// process owns the file).
static SQLITE_REBUILDS: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Marks a SQLite rebuild as running until dropped.
struct RebuildClaim(String);

impl RebuildClaim {
    fn take(name: &str) -> Option<Self> {
        let mut running = SQLITE_REBUILDS.lock().ok()?;
        running
            .get_or_insert_with(HashSet::new)
            .insert(name.to_string())
            .then(|| Self(name.to_string()))
    }

    fn running(name: &str) -> bool {
        SQLITE_REBUILDS
            .lock()
            .ok()
            .and_then(|running| running.as_ref().map(|set| set.contains(name)))
            .unwrap_or(false)
    }
}

impl Drop for RebuildClaim {
    fn drop(&mut self) {
        if let Ok(mut running) = SQLITE_REBUILDS.lock() {
            if let Some(set) = running.as_mut() {
                set.remove(&self.0);
            }
        }
    }
}

/// Replays the feed from zero into a fresh copy of the handler's tables
/// and swaps it in. Queries keep reading the old tables until the swap
/// commits.
pub async fn rebuild(
    db: &Db,
    handler: &dyn FeedHandler,
    batch_size: i64,
) -> Result<RebuildReport, StorageError> {
    let started = Instant::now();
    let name = handler.name();
    let Some(live_schema) = handler.schema() else {
        return Err(StorageError::EventStore(format!(
            "{name} has no read model to rebuild"
        )));
    };
    let shadow = Shadow {
        live_schema,
        schema: format!("{live_schema}__rebuild"),
        checkpoint: format!("{name}__rebuild"),
    };
    let busy = || StorageError::EventStore(format!("a rebuild of {name} is already running"));
    let settings = RunnerSettings {
        batch_size,
        ..RunnerSettings::default()
    };
    handler.reset();
    let (events, position) = match db {
        Db::Postgres(pool) => {
            let mut conn = connect(pool, &format!("karvon-rebuild:{name}")).await?;
            if !try_lock(&mut conn, &shadow.checkpoint).await? {
                return Err(busy());
            }
            rebuild_on(&mut Conn::Postgres(&mut conn), handler, &shadow, &settings).await?
        }
        Db::Sqlite(sqlite) => {
            let _claim = RebuildClaim::take(&shadow.checkpoint).ok_or_else(busy)?;
            // A connection of its own, not the pool's one writer: between
            // two of its batches SQLite's write lock passes to commands and
            // the live runners (who wait for it up to the busy timeout).
            let mut conn = sqlite.writer.connect_options().connect().await?;
            let rebuilt =
                rebuild_on(&mut Conn::Sqlite(&mut conn), handler, &shadow, &settings).await;
            conn.close().await?;
            rebuilt?
        }
    };
    Ok(RebuildReport {
        events,
        position,
        elapsed: started.elapsed(),
    })
}

/// Where a rebuild writes.
struct Shadow<'a> {
    live_schema: &'a str,
    schema: String,
    checkpoint: String,
}

async fn rebuild_on(
    conn: &mut Conn<'_>,
    handler: &dyn FeedHandler,
    shadow: &Shadow<'_>,
    settings: &RunnerSettings,
) -> Result<(u64, Position), StorageError> {
    let name = handler.name();
    let mut memory = StepMemory::default();
    prepare(conn, handler).await?;
    reset_shadow(conn, handler, shadow).await?;
    let mut events = 0u64;
    loop {
        let applied = step(
            conn,
            handler,
            &shadow.checkpoint,
            Some(&shadow.schema),
            settings,
            &mut memory,
        )
        .await?;
        events += applied as u64;
        if (applied as i64) < settings.batch_size {
            break;
        }
    }

    // Swap: hold the live checkpoint (the live runner waits), catch up the
    // last events, exchange the tables and hand the position over. Queries
    // still reading the old tables can hold the swap up on PostgreSQL; it
    // gives up after a bounded wait and tries again rather than queueing
    // them all behind it.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let swap_memory = StepMemory {
            last_committed: memory.last_committed,
        };
        match swap(conn, handler, shadow, settings, swap_memory).await {
            Ok((position, swapped)) => return Ok((events + swapped, position)),
            Err(StorageError::Database(error)) if attempt < 10 && is_lock_conflict(&error) => {
                handler.reset();
                memory.last_committed = None;
                tracing::info!(
                    projection = name,
                    attempt,
                    "swap waited too long for locks; retrying"
                );
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Drops whatever an earlier rebuild left and creates empty shadow tables
/// with a checkpoint at zero.
async fn reset_shadow(
    conn: &mut Conn<'_>,
    handler: &dyn FeedHandler,
    shadow: &Shadow<'_>,
) -> Result<(), StorageError> {
    let drop_old: Vec<String> = match conn.backend() {
        Backend::Postgres => vec![
            format!("DROP SCHEMA IF EXISTS {} CASCADE", shadow.schema),
            format!("CREATE SCHEMA {}", shadow.schema),
        ],
        Backend::Sqlite => handler
            .tables()
            .iter()
            .map(|table| {
                format!(
                    "DROP TABLE IF EXISTS {}",
                    Backend::Sqlite.table(&shadow.schema, table)
                )
            })
            .collect(),
    };
    on_conn!(conn, c => {
        let mut tx = c.begin_with(begin_write(&**c)).await?;
        let mut tx_conn = tx.as_conn();
        for statement in &drop_old {
            tx_conn.execute(statement).await?;
        }
        handler.create_tables(&mut tx_conn, &shadow.schema).await?;
        delete_checkpoint(&mut tx_conn, &shadow.checkpoint).await?;
        ensure_checkpoint(&mut tx_conn, &shadow.checkpoint).await?;
        tx.commit().await?;
    });
    Ok(())
}

fn is_lock_conflict(error: &sqlx::Error) -> bool {
    // 55P03 lock_not_available (lock_timeout), 40P01 deadlock_detected.
    matches!(
        error
            .as_database_error()
            .and_then(|error| error.code())
            .as_deref(),
        Some("55P03" | "40P01")
    )
}

/// The swap transaction of a rebuild; returns the new live position and
/// the events it applied while catching up.
async fn swap(
    conn: &mut Conn<'_>,
    handler: &dyn FeedHandler,
    shadow: &Shadow<'_>,
    settings: &RunnerSettings,
    memory: StepMemory,
) -> Result<(Position, u64), StorageError> {
    on_conn!(conn, c => {
        let mut tx = c.begin_with(begin_write(&**c)).await?;
        let mut tx_conn = tx.as_conn();
        if tx_conn.backend() == Backend::Postgres {
            tx_conn.execute("SET LOCAL lock_timeout = '5s'").await?;
        }
        // Holds the live runner off until the swap commits (on SQLite the
        // write lock already does).
        read_checkpoint(&mut tx_conn, handler.name()).await?;
        let events = catch_up(&mut tx_conn, handler, shadow, settings, memory).await?;
        exchange_tables(&mut tx_conn, handler, shadow).await?;
        let position = hand_over(&mut tx_conn, handler.name(), shadow).await?;
        tx.commit().await?;
        Ok((position, events))
    })
}

/// Puts the rebuilt tables where the live ones were, inside the swap.
async fn exchange_tables(
    tx: &mut Conn<'_>,
    handler: &dyn FeedHandler,
    shadow: &Shadow<'_>,
) -> Result<(), StorageError> {
    let live = shadow.live_schema;
    match tx {
        Conn::Postgres(_) => {
            let old = format!("{live}__old");
            for statement in [
                format!("DROP SCHEMA IF EXISTS {old} CASCADE"),
                format!("ALTER SCHEMA {live} RENAME TO {old}"),
                format!("ALTER SCHEMA {} RENAME TO {live}", shadow.schema),
                format!("DROP SCHEMA {old} CASCADE"),
            ] {
                tx.execute(&statement).await?;
            }
        }
        Conn::Sqlite(conn) => {
            // Indexes keep the names they were built under: note those,
            // then let the handler create the live ones after the renames.
            let stale: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master
                  WHERE type = 'index' AND sql IS NOT NULL AND substr(name, 1, length($1)) = $1",
            )
            .bind(format!("{}_", shadow.schema))
            .fetch_all(&mut **conn)
            .await?;
            for table in handler.tables() {
                let (current, rebuilt) = (
                    Backend::Sqlite.table(live, table),
                    Backend::Sqlite.table(&shadow.schema, table),
                );
                tx.execute(&format!("DROP TABLE IF EXISTS {current}"))
                    .await?;
                tx.execute(&format!("ALTER TABLE {rebuilt} RENAME TO {current}"))
                    .await?;
            }
            for index in stale {
                tx.execute(&format!("DROP INDEX IF EXISTS {index}")).await?;
            }
            handler.create_tables(tx, live).await?;
        }
    }
    Ok(())
}

/// Applies what was appended since the rebuild's last step.
async fn catch_up(
    tx: &mut Conn<'_>,
    handler: &dyn FeedHandler,
    shadow: &Shadow<'_>,
    settings: &RunnerSettings,
    mut memory: StepMemory,
) -> Result<u64, StorageError> {
    let mut events = 0u64;
    loop {
        let (applied, position) = step_within(
            tx,
            handler,
            &shadow.checkpoint,
            Some(&shadow.schema),
            settings,
            &memory,
        )
        .await?;
        memory.last_committed = Some(position);
        events += applied as u64;
        if (applied as i64) < settings.batch_size {
            return Ok(events);
        }
    }
}

/// Gives the live checkpoint the rebuild's position and a new generation
/// (so the live runner drops what it cached), and removes the rebuild's.
async fn hand_over(
    tx: &mut Conn<'_>,
    name: &str,
    shadow: &Shadow<'_>,
) -> Result<Position, StorageError> {
    const HAND_OVER: &str = "UPDATE projection_checkpoints
            SET transaction_id = (SELECT transaction_id FROM projection_checkpoints WHERE name = $2),
                position = (SELECT position FROM projection_checkpoints WHERE name = $2),
                events_seen = (SELECT events_seen FROM projection_checkpoints WHERE name = $2),
                generation = generation + 1
          WHERE name = $1";
    on_conn!(tx, c => {
        sqlx::query(HAND_OVER)
        .bind(name)
        .bind(&shadow.checkpoint)
        .execute(&mut **c)
        .await?;
    });
    delete_checkpoint(tx, &shadow.checkpoint).await?;
    Ok(read_checkpoint(tx, name).await?.0)
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ProjectionStatus {
    pub name: String,
    pub position: String,
    pub events_seen: i64,
    /// Settled events not yet applied.
    pub lag_events: i64,
    /// How many rebuilds have been swapped in.
    pub generation: i64,
    /// True while a rebuild of this projection runs (it holds its lock).
    pub rebuilding: bool,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Where every feed consumer stands.
pub async fn status(db: &Db) -> Result<Vec<ProjectionStatus>, StorageError> {
    match db {
        Db::Postgres(pool) => {
            let rows = sqlx::query(
                "SELECT c.name, c.transaction_id::text AS txid, c.position, c.events_seen, c.updated_at,
                        c.generation,
                        EXISTS (SELECT 1 FROM pg_locks l
                                 WHERE l.locktype = 'advisory' AND l.granted
                                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                                   AND ((l.classid::bigint << 32) | l.objid::bigint)
                                       = hashtextextended('karvon.feed.' || c.name || '__rebuild', 0)) AS rebuilding,
                        (SELECT count(*) FROM public.events e
                          WHERE (e.transaction_id, e.global_position) > (c.transaction_id, c.position)
                            AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())) AS lag
                   FROM public.projection_checkpoints c
                  WHERE c.name NOT LIKE '%\\_\\_rebuild'
                  ORDER BY c.name",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| status_row(row, row.flag("rebuilding")?))
                .collect()
        }
        Db::Sqlite(sqlite) => {
            let rows = sqlx::query(
                "SELECT c.name, CAST(c.transaction_id AS TEXT) AS txid, c.position, c.events_seen,
                        c.updated_at, c.generation,
                        (SELECT count(*) FROM events e WHERE e.global_position > c.position) AS lag
                   FROM projection_checkpoints c
                  WHERE c.name NOT LIKE '%\\_\\_rebuild' ESCAPE '\\'
                  ORDER BY c.name",
            )
            .fetch_all(&sqlite.readers)
            .await?;
            rows.iter()
                .map(|row| {
                    let rebuilding =
                        RebuildClaim::running(&format!("{}__rebuild", row.text("name")?));
                    status_row(row, rebuilding)
                })
                .collect()
        }
    }
}

fn status_row(row: &impl Portable, rebuilding: bool) -> Result<ProjectionStatus, StorageError> {
    Ok(ProjectionStatus {
        name: row.text("name")?,
        position: row_position(row, "position")?.to_string(),
        events_seen: row.int("events_seen")?,
        lag_events: row.int("lag")?,
        generation: row.int("generation")?,
        rebuilding,
        updated_at: row.time("updated_at")?,
    })
}

/// True once every named consumer has applied `target`.
pub async fn reached(db: &Db, names: &[&str], target: Position) -> Result<bool, StorageError> {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let done: i64 = match db {
        Db::Postgres(pool) => {
            sqlx::query_scalar(
                "SELECT count(*) FROM projection_checkpoints
                  WHERE name = ANY($1) AND (transaction_id, position) >= ($2::text::xid8, $3)",
            )
            .bind(&names)
            .bind(target.transaction_id.to_string())
            .bind(target.global_position)
            .fetch_one(pool)
            .await?
        }
        Db::Sqlite(sqlite) => {
            sqlx::query_scalar(
                "SELECT count(*) FROM projection_checkpoints
                  WHERE name IN (SELECT value FROM json_each($1))
                    AND (transaction_id, position) >= ($2, $3)",
            )
            .bind(crate::db::json_list(&names))
            .bind(target.transaction_id as i64)
            .bind(target.global_position)
            .fetch_one(&sqlite.readers)
            .await?
        }
    };
    Ok(done as usize == names.len())
}

/// Waits up to `timeout` for every named consumer to apply the event the
/// token names (resolving a stream token once its event is committed).
pub async fn wait_until_applied(
    db: &Db,
    names: &[&str],
    target: &PositionToken,
    timeout: Duration,
) -> Result<bool, StorageError> {
    let deadline = Instant::now() + timeout;
    let mut resolved = None;
    loop {
        if resolved.is_none() {
            resolved = feed::resolve(db, target).await?;
        }
        if let Some(position) = resolved {
            if reached(db, names, position).await? {
                return Ok(true);
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}
