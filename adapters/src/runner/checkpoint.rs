//! The checkpoint row of each consumer (`projection_checkpoints`): where it
//! stands, and whether it stopped on an event; and the events operators
//! skipped (`skipped_events`).

use chrono::{DateTime, Utc};
use karvon_projections::Position;
use sqlx::Connection;
use uuid::Uuid;

use super::session::begin_write;
use crate::StorageError;
use crate::db::{AsConn, Backend, Conn, Db, Portable, on_conn, on_pool};
use crate::feed::{self, EventRef, Wanted};
use crate::store::row_position;

const ENSURE: &str =
    "INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";

pub(crate) async fn ensure(conn: &mut Conn<'_>, name: &str) -> Result<(), StorageError> {
    on_conn!(conn, c => {
        sqlx::query(ENSURE).bind(name).execute(&mut **c).await?;
    });
    Ok(())
}

pub(crate) async fn delete(conn: &mut Conn<'_>, name: &str) -> Result<(), StorageError> {
    const DELETE: &str = "DELETE FROM projection_checkpoints WHERE name = $1";
    on_conn!(conn, c => {
        sqlx::query(DELETE).bind(name).execute(&mut **c).await?;
    });
    Ok(())
}

/// The stored checkpoint (position, generation), locked for this
/// transaction on PostgreSQL (SQLite's write lock already covers it).
pub(crate) async fn read_locked(
    conn: &mut Conn<'_>,
    name: &str,
) -> Result<(Position, i64), StorageError> {
    let backend = conn.backend();
    let lock = match backend {
        Backend::Postgres => "FOR UPDATE",
        Backend::Sqlite => "",
    };
    read_with(conn, name, lock).await
}

/// The stored checkpoint, not locked.
pub(crate) async fn read(conn: &mut Conn<'_>, name: &str) -> Result<(Position, i64), StorageError> {
    read_with(conn, name, "").await
}

async fn read_with(
    conn: &mut Conn<'_>,
    name: &str,
    lock: &str,
) -> Result<(Position, i64), StorageError> {
    let select = format!(
        "SELECT {} AS txid, position, generation FROM projection_checkpoints WHERE name = $1 {lock}",
        conn.backend().xid_text("transaction_id")
    );
    on_conn!(conn, c => {
        let row = sqlx::query(&select).bind(name).fetch_one(&mut **c).await?;
        Ok((row_position(&row, "position")?, row.int("generation")?))
    })
}

/// Moves a checkpoint to `position` after `seen` more events (inside the
/// caller's transaction).
pub(crate) async fn write(
    conn: &mut Conn<'_>,
    name: &str,
    position: Position,
    seen: usize,
) -> Result<(), StorageError> {
    advance_from(conn, name, None, position, seen).await?;
    Ok(())
}

/// Moves a checkpoint from `from` (when given: only if it is still there)
/// to `to`; false when it had moved.
async fn advance_from(
    conn: &mut Conn<'_>,
    name: &str,
    from: Option<Position>,
    to: Position,
    seen: usize,
) -> Result<bool, StorageError> {
    let backend = conn.backend();
    let guard = match from {
        Some(_) => format!(
            "AND transaction_id = {} AND position = $6",
            backend.xid_param("$5")
        ),
        None => String::new(),
    };
    let update = format!(
        "UPDATE projection_checkpoints
            SET transaction_id = {}, position = $3, events_seen = events_seen + $4,
                updated_at = {}
          WHERE name = $1 {guard}",
        backend.xid_param("$2"),
        backend.now()
    );
    let moved = on_conn!(conn, c => {
        let query = sqlx::query(&update)
            .bind(name)
            .bind(to.transaction_id.to_string())
            .bind(to.global_position)
            .bind(seen as i64);
        let query = match from {
            Some(from) => query
                .bind(from.transaction_id.to_string())
                .bind(from.global_position),
            None => query,
        };
        query.execute(&mut **c).await?.rows_affected()
    });
    Ok(moved == 1)
}

/// Moves a checkpoint outside any step transaction (reactors, publishers),
/// only if it is still at `from`: a runner that lost its leadership
/// cannot move it back.
pub(crate) async fn advance(
    db: &Db,
    name: &str,
    from: Position,
    to: Position,
    seen: usize,
) -> Result<bool, StorageError> {
    on_pool!(db, write, pool => {
        let mut conn = pool.acquire().await?;
        advance_from(&mut conn.as_conn(), name, Some(from), to, seen).await
    })
}

/// Moves a consumer's checkpoint back (or anywhere) to `to`, so it consumes
/// again every event after it (`karvon relay republish`). A step in flight
/// elsewhere then cannot move it on: its move is guarded by where it read.
/// False when the consumer has no checkpoint yet.
pub async fn rewind(db: &Db, name: &str, to: Position) -> Result<bool, StorageError> {
    on_pool!(db, write, pool => {
        let mut conn = pool.acquire().await?;
        advance_from(&mut conn.as_conn(), name, None, to, 0).await
    })
}

/// A consumer's recorded failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub event_id: Option<Uuid>,
    pub error: String,
    pub failed_at: DateTime<Utc>,
    /// Failures in a row.
    pub failures: i64,
}

/// The consumer's failure, when it is stopped on an event.
pub async fn failure(db: &Db, name: &str) -> Result<Option<Failure>, StorageError> {
    on_pool!(db, read, pool => {
        let mut conn = pool.acquire().await?;
        failure_in(&mut conn.as_conn(), name).await
    })
}

/// Records that the consumer stopped on the next event after its
/// checkpoint (of the types it reads), with `error`.
pub(crate) async fn record_failure(
    db: &Db,
    name: &str,
    wanted: Wanted,
    error: &StorageError,
) -> Result<Failure, StorageError> {
    let message: String = error.to_string().chars().take(2000).collect();
    on_pool!(db, write, pool => {
        let mut conn = pool.acquire().await?;
        let mut conn = conn.as_conn();
        let (after, _) = read(&mut conn, name).await?;
        let event = feed::peek(&mut conn, after, wanted).await?;
        let backend = conn.backend();
        let update = format!(
            "UPDATE projection_checkpoints
                SET failed_event_id = {}, last_error = $3, failed_at = {}, failures = failures + 1
              WHERE name = $1",
            backend.uuid_param("$2"),
            backend.now()
        );
        on_conn!(&mut conn, c => {
            sqlx::query(&update)
                .bind(name)
                .bind(event.as_ref().map(|event| event.event_id.to_string()))
                .bind(&message)
                .execute(&mut **c)
                .await?;
        });
    });
    failure(db, name)
        .await?
        .ok_or_else(|| StorageError::EventStore(format!("the failure of {name} was not recorded")))
}

const CLEAR: &str = "UPDATE projection_checkpoints
        SET failed_event_id = NULL, last_error = NULL, failed_at = NULL, failures = 0
      WHERE name = $1 AND failed_at IS NOT NULL";

/// Forgets a failure (the consumer got past it).
pub(crate) async fn clear_failure(db: &Db, name: &str) -> Result<(), StorageError> {
    on_pool!(db, write, pool => {
        sqlx::query(CLEAR).bind(name).execute(pool).await?;
    });
    Ok(())
}

/// Asks a failed consumer to try its event again now; false when it was
/// not failed.
pub async fn retry(db: &Db, name: &str) -> Result<bool, StorageError> {
    let cleared = on_pool!(db, write, pool => sqlx::query(CLEAR)
        .bind(name)
        .execute(pool)
        .await?
        .rows_affected());
    Ok(cleared == 1)
}

/// An event a consumer was told to pass over, with the error it failed on.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SkippedEvent {
    pub event_id: Uuid,
    /// Feed position of the event.
    pub position: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub error: String,
    /// Who skipped it (`key:<id>`, `user:<name>` or `cli`).
    pub skipped_by: String,
    pub skipped_at: DateTime<Utc>,
}

#[derive(Debug)]
pub enum SkipOutcome {
    Skipped(SkippedEvent),
    /// The consumer is not stopped on an event.
    NotFailed,
}

/// Passes a failed consumer over the event it stopped on: records the
/// event with its error and moves the checkpoint past it, in one write
/// transaction holding the checkpoint row. `wanted`: the types the
/// consumer reads ([`crate::runner::Consumer::aggregate_types`]).
pub async fn skip(
    db: &Db,
    name: &str,
    wanted: Wanted,
    actor: &str,
) -> Result<SkipOutcome, StorageError> {
    on_pool!(db, write, pool => {
        let mut conn = pool.acquire().await?;
        let begin = begin_write(&*conn);
        let mut tx = conn.begin_with(begin).await?;
        let outcome = skip_within(&mut tx.as_conn(), name, wanted, actor).await?;
        tx.commit().await?;
        db.notify_checkpoint();
        Ok(outcome)
    })
}

async fn skip_within(
    tx: &mut Conn<'_>,
    name: &str,
    wanted: Wanted,
    actor: &str,
) -> Result<SkipOutcome, StorageError> {
    if failure_in(tx, name).await?.is_none() {
        return Ok(SkipOutcome::NotFailed);
    }
    // Under the row's lock, look again: a retry may have cleared it.
    let (after, _) = read_locked(tx, name).await?;
    let Some(Failure {
        event_id: Some(event_id),
        error,
        ..
    }) = failure_in(tx, name).await?
    else {
        return Ok(SkipOutcome::NotFailed);
    };
    let Some(event) = feed::peek(tx, after, wanted)
        .await?
        .filter(|next| next.event_id == event_id)
    else {
        // The consumer moved on meanwhile; nothing to skip.
        return Ok(SkipOutcome::NotFailed);
    };
    insert_skipped(tx, name, &event, &error, actor).await?;
    write(tx, name, event.position, 1).await?;
    on_conn!(tx, c => {
        sqlx::query(CLEAR).bind(name).execute(&mut **c).await?;
    });
    Ok(SkipOutcome::Skipped(SkippedEvent {
        event_id: event.event_id,
        position: event.position.to_string(),
        aggregate_type: event.aggregate_type,
        aggregate_id: event.aggregate_id,
        sequence: event.sequence,
        event_type: event.event_type,
        error,
        skipped_by: actor.to_string(),
        skipped_at: Utc::now(),
    }))
}

async fn failure_in(conn: &mut Conn<'_>, name: &str) -> Result<Option<Failure>, StorageError> {
    const SELECT: &str = "SELECT failed_event_id, last_error, failed_at, failures
                            FROM projection_checkpoints
                           WHERE name = $1 AND failed_at IS NOT NULL";
    on_conn!(conn, c => sqlx::query(SELECT)
        .bind(name)
        .fetch_optional(&mut **c)
        .await?
        .map(|row| {
            Ok(Failure {
                event_id: row.opt_uuid("failed_event_id")?,
                error: row.opt_text("last_error")?.unwrap_or_default(),
                failed_at: row.time("failed_at")?,
                failures: row.int("failures")?,
            })
        })
        .transpose())
}

async fn insert_skipped(
    tx: &mut Conn<'_>,
    name: &str,
    event: &EventRef,
    error: &str,
    actor: &str,
) -> Result<(), StorageError> {
    let backend = tx.backend();
    let insert = format!(
        "INSERT INTO skipped_events (consumer, event_id, transaction_id, global_position,
                                     aggregate_type, aggregate_id, sequence, event_type, error,
                                     skipped_by)
         VALUES ($1, {}, {}, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (consumer, event_id) DO NOTHING",
        backend.uuid_param("$2"),
        backend.xid_param("$3"),
    );
    on_conn!(tx, c => {
        sqlx::query(&insert)
            .bind(name)
            .bind(event.event_id.to_string())
            .bind(event.position.transaction_id.to_string())
            .bind(event.position.global_position)
            .bind(&event.aggregate_type)
            .bind(&event.aggregate_id)
            .bind(event.sequence)
            .bind(&event.event_type)
            .bind(error)
            .bind(actor)
            .execute(&mut **c)
            .await?;
    });
    Ok(())
}

/// The events `name` skipped, oldest first.
pub async fn skipped(db: &Db, name: &str) -> Result<Vec<SkippedEvent>, StorageError> {
    let backend = db.backend();
    let select = format!(
        "SELECT event_id, {} AS txid, global_position, aggregate_type, aggregate_id, sequence,
                event_type, error, skipped_by, skipped_at
           FROM skipped_events WHERE consumer = $1
          ORDER BY skipped_at, global_position",
        backend.xid_text("transaction_id")
    );
    on_pool!(db, read, pool => sqlx::query(&select)
        .bind(name)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok(SkippedEvent {
                event_id: row.uuid("event_id")?,
                position: row_position(row, "global_position")?.to_string(),
                aggregate_type: row.text("aggregate_type")?,
                aggregate_id: row.text("aggregate_id")?,
                sequence: row.int("sequence")?,
                event_type: row.text("event_type")?,
                error: row.text("error")?,
                skipped_by: row.text("skipped_by")?,
                skipped_at: row.time("skipped_at")?,
            })
        })
        .collect())
}
