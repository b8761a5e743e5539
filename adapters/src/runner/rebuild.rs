//! Rebuild: replay from position zero into a fresh schema beside the live
//! one, then, in one transaction holding the live checkpoint row, catch up
//! and swap the schemas; queries answer from the old tables until then.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use karvon_projections::Position;
use sqlx::{ConnectOptions, Connection};

use super::session::{begin_write, connect, create_schema, try_lock};
use super::step::{StepMemory, step, step_within};
use super::{Projection, RunnerSettings, checkpoint};
use crate::StorageError;
use crate::db::{AsConn, Backend, Conn, Db, on_conn};

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
pub(crate) struct RebuildClaim(String);

impl RebuildClaim {
    fn take(name: &str) -> Option<Self> {
        let mut running = SQLITE_REBUILDS.lock().ok()?;
        running
            .get_or_insert_with(HashSet::new)
            .insert(name.to_string())
            .then(|| Self(name.to_string()))
    }

    pub(crate) fn running(name: &str) -> bool {
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

/// Replays the feed from zero into a fresh copy of the projection's tables
/// and swaps it in. Queries keep reading the old tables until the swap
/// commits.
pub async fn rebuild(
    db: &Db,
    projection: &dyn Projection,
    batch_size: i64,
) -> Result<RebuildReport, StorageError> {
    let started = Instant::now();
    let name = projection.name();
    let live_schema = name;
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
    projection.reset();
    let (events, position) = match db {
        Db::Postgres(pool) => {
            let mut conn = connect(pool, &format!("karvon-rebuild:{name}")).await?;
            if !try_lock(&mut conn, &shadow.checkpoint).await? {
                return Err(busy());
            }
            rebuild_on(
                &mut Conn::Postgres(&mut conn),
                projection,
                &shadow,
                &settings,
            )
            .await?
        }
        Db::Sqlite(sqlite) => {
            let _claim = RebuildClaim::take(&shadow.checkpoint).ok_or_else(busy)?;
            // A connection of its own, not the pool's one writer: between
            // two of its batches SQLite's write lock passes to commands and
            // the live runners (who wait for it up to the busy timeout).
            let mut conn = sqlite.writer.connect_options().connect().await?;
            let rebuilt =
                rebuild_on(&mut Conn::Sqlite(&mut conn), projection, &shadow, &settings).await;
            conn.close().await?;
            rebuilt?
        }
    };
    db.notify_checkpoint();
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
    projection: &dyn Projection,
    shadow: &Shadow<'_>,
    settings: &RunnerSettings,
) -> Result<(u64, Position), StorageError> {
    let name = projection.name();
    let mut memory = StepMemory::default();
    create_schema(conn, projection, shadow.live_schema).await?;
    checkpoint::ensure(conn, name).await?;
    reset_shadow(conn, projection, shadow).await?;
    let mut events = 0u64;
    loop {
        let applied = step(
            conn,
            projection,
            &shadow.checkpoint,
            &shadow.schema,
            settings,
            settings.batch_size,
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
        match swap(conn, projection, shadow, settings, swap_memory).await {
            Ok((position, swapped)) => return Ok((events + swapped, position)),
            Err(StorageError::Database(error)) if attempt < 10 && is_lock_conflict(&error) => {
                projection.reset();
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
    projection: &dyn Projection,
    shadow: &Shadow<'_>,
) -> Result<(), StorageError> {
    let drop_old: Vec<String> = match conn.backend() {
        Backend::Postgres => vec![
            format!("DROP SCHEMA IF EXISTS {} CASCADE", shadow.schema),
            format!("CREATE SCHEMA {}", shadow.schema),
        ],
        Backend::Sqlite => projection
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
        projection.create_tables(&mut tx_conn, &shadow.schema).await?;
        checkpoint::delete(&mut tx_conn, &shadow.checkpoint).await?;
        checkpoint::ensure(&mut tx_conn, &shadow.checkpoint).await?;
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
    projection: &dyn Projection,
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
        checkpoint::read_locked(&mut tx_conn, projection.name()).await?;
        let events = catch_up(&mut tx_conn, projection, shadow, settings, memory).await?;
        exchange_tables(&mut tx_conn, projection, shadow).await?;
        let position = hand_over(&mut tx_conn, projection.name(), shadow).await?;
        tx.commit().await?;
        Ok((position, events))
    })
}

/// Puts the rebuilt tables where the live ones were, inside the swap.
async fn exchange_tables(
    tx: &mut Conn<'_>,
    projection: &dyn Projection,
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
            // then let the projection create the live ones after the renames.
            let stale: Vec<String> = sqlx::query_scalar(
                "SELECT name FROM sqlite_master
                  WHERE type = 'index' AND sql IS NOT NULL AND substr(name, 1, length($1)) = $1",
            )
            .bind(format!("{}_", shadow.schema))
            .fetch_all(&mut **conn)
            .await?;
            for table in projection.tables() {
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
            projection.create_tables(tx, live).await?;
        }
    }
    Ok(())
}

/// Applies what was appended since the rebuild's last step.
async fn catch_up(
    tx: &mut Conn<'_>,
    projection: &dyn Projection,
    shadow: &Shadow<'_>,
    settings: &RunnerSettings,
    mut memory: StepMemory,
) -> Result<u64, StorageError> {
    let mut events = 0u64;
    loop {
        let ((applied, _), position) = step_within(
            tx,
            projection,
            &shadow.checkpoint,
            &shadow.schema,
            settings,
            settings.batch_size,
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
    checkpoint::delete(tx, &shadow.checkpoint).await?;
    Ok(checkpoint::read_locked(tx, name).await?.0)
}
