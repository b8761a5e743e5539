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

use std::sync::Arc;
use std::time::{Duration, Instant};

use karvon_projections::{Position, PositionToken};
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};
use tokio::sync::watch;

use crate::StorageError;
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

    /// Creates the read model's tables in `schema` when missing.
    async fn create_tables(
        &self,
        _conn: &mut PgConnection,
        _schema: &str,
    ) -> Result<(), StorageError> {
        Ok(())
    }

    /// Forgets any state cached between steps. The runner calls it whenever
    /// the stored checkpoint is not the one it last committed (a failed
    /// step, a restart, a rebuild that swapped the tables).
    fn reset(&self) {}

    /// Applies a batch inside the step's transaction. `search_path` points
    /// at the target schema, so table names are written unqualified.
    /// State cached in memory is only valid once the step commits; the
    /// runner resets it otherwise.
    async fn apply(
        &self,
        conn: &mut PgConnection,
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
    pool: PgPool,
    handler: Arc<dyn FeedHandler>,
    settings: RunnerSettings,
}

impl Runner {
    pub fn new(pool: PgPool, handler: Arc<dyn FeedHandler>, settings: RunnerSettings) -> Self {
        Self {
            pool,
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
        let application_name = format!("karvon-runner:{name}:{}", self.settings.instance);
        let mut conn = connect(&self.pool, &application_name).await?;
        while !try_lock(&mut conn, name).await? {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.standby_interval) => {}
                _ = shutdown.changed() => return Ok(()),
            }
            if *shutdown.borrow() {
                return Ok(());
            }
        }
        tracing::info!(projection = name, "projection runner is active");
        prepare(&mut conn, self.handler.as_ref()).await?;
        let mut memory = StepMemory::default();
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let started = Instant::now();
            let applied = step(
                &mut conn,
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
                notification = listener.recv() => {
                    if let Err(error) = notification {
                        tracing::debug!(projection = name, %error, "listener error; polling");
                        tokio::time::sleep(self.settings.poll_interval).await;
                    }
                }
                _ = tokio::time::sleep(self.settings.poll_interval) => {}
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

/// Creates the checkpoint row and the live tables if this is a first start.
/// Creates a consumer's checkpoint row and live tables when missing; the
/// application does this for every consumer before it serves queries.
pub async fn prepare_consumer(
    pool: &PgPool,
    handler: &dyn FeedHandler,
) -> Result<(), StorageError> {
    let mut conn = pool.acquire().await?;
    prepare(&mut conn, handler).await
}

async fn prepare(conn: &mut PgConnection, handler: &dyn FeedHandler) -> Result<(), StorageError> {
    ensure_checkpoint(conn, handler.name()).await?;
    if let Some(schema) = handler.schema() {
        let mut tx = conn.begin().await?;
        // Concurrent CREATE … IF NOT EXISTS can still collide in the
        // catalogue; instances starting together take turns.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('karvon.prepare', 0))")
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut *tx)
            .await?;
        handler.create_tables(&mut tx, schema).await?;
        tx.commit().await?;
    }
    Ok(())
}

async fn ensure_checkpoint(conn: &mut PgConnection, name: &str) -> Result<(), StorageError> {
    sqlx::query("INSERT INTO public.projection_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
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
    conn: &mut PgConnection,
    handler: &dyn FeedHandler,
    checkpoint: &str,
    schema: Option<&str>,
    settings: &RunnerSettings,
    memory: &mut StepMemory,
) -> Result<usize, StorageError> {
    let outcome = async {
        let mut tx = conn.begin().await?;
        let stepped = step_within(&mut tx, handler, checkpoint, schema, settings, memory).await?;
        tx.commit().await?;
        Ok::<_, StorageError>(stepped)
    }
    .await;
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
    tx: &mut PgConnection,
    handler: &dyn FeedHandler,
    checkpoint: &str,
    schema: Option<&str>,
    settings: &RunnerSettings,
    memory: &StepMemory,
) -> Result<(usize, (Position, i64)), StorageError> {
    if let Some(schema) = schema {
        sqlx::query(&format!("SET LOCAL search_path TO {schema}, public"))
            .execute(&mut *tx)
            .await?;
    }
    let row = sqlx::query(
        "SELECT transaction_id::text AS txid, position, generation
           FROM public.projection_checkpoints WHERE name = $1 FOR UPDATE",
    )
    .bind(checkpoint)
    .fetch_one(&mut *tx)
    .await?;
    let after = row_position(&row, "position")?;
    let generation: i64 = row.get("generation");
    if memory.last_committed != Some((after, generation)) {
        handler.reset();
    }
    let events = feed::read_batch(&mut *tx, after, settings.batch_size).await?;
    let Some(last) = events.last() else {
        return Ok((0, (after, generation)));
    };
    handler.apply(&mut *tx, &events).await?;
    if !settings.pause_before_checkpoint.is_zero() {
        tokio::time::sleep(settings.pause_before_checkpoint).await;
    }
    sqlx::query(
        "UPDATE public.projection_checkpoints
            SET transaction_id = $2::text::xid8, position = $3, events_seen = events_seen + $4,
                updated_at = now()
          WHERE name = $1",
    )
    .bind(checkpoint)
    .bind(last.position.transaction_id.to_string())
    .bind(last.position.global_position)
    .bind(events.len() as i64)
    .execute(&mut *tx)
    .await?;
    metrics::counter!("karvon_projection_events_total", "projection" => handler.name().to_string())
        .increment(events.len() as u64);
    Ok((events.len(), (last.position, generation)))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub position: Position,
    pub elapsed: Duration,
}

/// Replays the feed from zero into a fresh copy of the handler's schema and
/// swaps it in. Queries keep reading the old tables until the swap commits.
pub async fn rebuild(
    pool: &PgPool,
    handler: &dyn FeedHandler,
    batch_size: i64,
) -> Result<RebuildReport, StorageError> {
    let started = Instant::now();
    let mut memory = StepMemory::default();
    handler.reset();
    let settings = RunnerSettings {
        batch_size,
        ..RunnerSettings::default()
    };
    let name = handler.name();
    let Some(live_schema) = handler.schema() else {
        return Err(StorageError::EventStore(format!(
            "{name} has no read model to rebuild"
        )));
    };
    let shadow_schema = format!("{live_schema}__rebuild");
    let shadow_checkpoint = format!("{name}__rebuild");
    let mut conn = connect(pool, &format!("karvon-rebuild:{name}")).await?;
    if !try_lock(&mut conn, &shadow_checkpoint).await? {
        return Err(StorageError::EventStore(format!(
            "a rebuild of {name} is already running"
        )));
    }
    prepare(&mut conn, handler).await?;

    let mut tx = conn.begin().await?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow_schema} CASCADE"))
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("CREATE SCHEMA {shadow_schema}"))
        .execute(&mut *tx)
        .await?;
    handler.create_tables(&mut tx, &shadow_schema).await?;
    sqlx::query("DELETE FROM public.projection_checkpoints WHERE name = $1")
        .bind(&shadow_checkpoint)
        .execute(&mut *tx)
        .await?;
    ensure_checkpoint(&mut tx, &shadow_checkpoint).await?;
    tx.commit().await?;

    let mut events = 0u64;
    loop {
        let applied = step(
            &mut conn,
            handler,
            &shadow_checkpoint,
            Some(&shadow_schema),
            &settings,
            &mut memory,
        )
        .await?;
        events += applied as u64;
        if (applied as i64) < batch_size {
            break;
        }
    }

    // Swap: hold the live checkpoint (the live runner waits), catch up the
    // last events, exchange the schemas and hand the position over. Queries
    // still reading the old tables can hold the swap up; it gives up after
    // a bounded wait and tries again rather than queueing them all behind it.
    let mut attempt = 0;
    let (row, swapped_events) = loop {
        attempt += 1;
        let swap_memory = StepMemory {
            last_committed: memory.last_committed,
        };
        match swap(
            &mut conn,
            handler,
            name,
            live_schema,
            &shadow_schema,
            &shadow_checkpoint,
            &settings,
            swap_memory,
        )
        .await
        {
            Ok(done) => break done,
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
    };
    events += swapped_events;
    let position = row_position(&row, "position")?;
    Ok(RebuildReport {
        events,
        position,
        elapsed: started.elapsed(),
    })
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

/// The swap transaction of a rebuild; returns the new live checkpoint row
/// and the events it applied while catching up.
#[allow(clippy::too_many_arguments)]
async fn swap(
    conn: &mut PgConnection,
    handler: &dyn FeedHandler,
    name: &str,
    live_schema: &str,
    shadow_schema: &str,
    shadow_checkpoint: &str,
    settings: &RunnerSettings,
    mut memory: StepMemory,
) -> Result<(sqlx::postgres::PgRow, u64), StorageError> {
    let mut events = 0u64;
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT 1 FROM public.projection_checkpoints WHERE name = $1 FOR UPDATE")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    loop {
        let (applied, position) = step_within(
            &mut tx,
            handler,
            shadow_checkpoint,
            Some(shadow_schema),
            settings,
            &memory,
        )
        .await?;
        memory.last_committed = Some(position);
        events += applied as u64;
        if (applied as i64) < settings.batch_size {
            break;
        }
    }
    let old_schema = format!("{live_schema}__old");
    for statement in [
        "SET LOCAL search_path TO public".to_string(),
        format!("DROP SCHEMA IF EXISTS {old_schema} CASCADE"),
        format!("ALTER SCHEMA {live_schema} RENAME TO {old_schema}"),
        format!("ALTER SCHEMA {shadow_schema} RENAME TO {live_schema}"),
        format!("DROP SCHEMA {old_schema} CASCADE"),
    ] {
        sqlx::query(&statement).execute(&mut *tx).await?;
    }
    let row = sqlx::query(
        "UPDATE public.projection_checkpoints AS live
            SET transaction_id = shadow.transaction_id, position = shadow.position,
                events_seen = shadow.events_seen, generation = live.generation + 1,
                updated_at = now()
           FROM public.projection_checkpoints AS shadow
          WHERE live.name = $1 AND shadow.name = $2
      RETURNING live.transaction_id::text AS txid, live.position",
    )
    .bind(name)
    .bind(shadow_checkpoint)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM public.projection_checkpoints WHERE name = $1")
        .bind(shadow_checkpoint)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((row, events))
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
pub async fn status(pool: &PgPool) -> Result<Vec<ProjectionStatus>, StorageError> {
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
        .map(|row| {
            let position = row_position(row, "position")?;
            Ok(ProjectionStatus {
                name: row.get("name"),
                position: position.to_string(),
                events_seen: row.get("events_seen"),
                lag_events: row.get("lag"),
                generation: row.get("generation"),
                rebuilding: row.get("rebuilding"),
                updated_at: row.get("updated_at"),
            })
        })
        .collect()
}

/// True once every named consumer has applied `target`.
pub async fn reached(
    pool: &PgPool,
    names: &[&str],
    target: Position,
) -> Result<bool, StorageError> {
    let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
    let done: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM public.projection_checkpoints
          WHERE name = ANY($1) AND (transaction_id, position) >= ($2::text::xid8, $3)",
    )
    .bind(&names)
    .bind(target.transaction_id.to_string())
    .bind(target.global_position)
    .fetch_one(pool)
    .await?;
    Ok(done as usize == names.len())
}

/// Waits up to `timeout` for every named consumer to apply the event the
/// token names (resolving a stream token once its event is committed).
pub async fn wait_until_applied(
    pool: &PgPool,
    names: &[&str],
    target: &PositionToken,
    timeout: Duration,
) -> Result<bool, StorageError> {
    let deadline = Instant::now() + timeout;
    let mut resolved = None;
    loop {
        if resolved.is_none() {
            resolved = feed::resolve(pool, target).await?;
        }
        if let Some(position) = resolved {
            if reached(pool, names, position).await? {
                return Ok(true);
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
}
