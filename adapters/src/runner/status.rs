//! Where consumers stand: the admin view, and the waits behind
//! `X-Min-Position` read-your-writes.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use karvon_projections::{Position, PositionToken};
use uuid::Uuid;

use super::rebuild::RebuildClaim;
use super::{Consumer, Kind, Wakeup};
use crate::StorageError;
use crate::db::{Backend, Db, Portable, on_pool};
use crate::feed;
use crate::store::row_position;

/// A consumer is `catching_up` (not `live`) while at least this many
/// settled events wait for it, or the oldest has waited this long.
const CATCHING_UP_EVENTS: i64 = 1000;
const CATCHING_UP_SECONDS: f64 = 5.0;

/// How one feed consumer stands.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ConsumerStatus {
    pub name: String,
    pub kind: Kind,
    /// `live`, `catching_up`, `rebuilding` or `failed`.
    #[schema(value_type = String)]
    pub state: &'static str,
    pub position: String,
    pub events_seen: i64,
    /// Settled events not yet applied.
    pub lag_events: i64,
    /// Age of the oldest settled event not yet applied (0 when none).
    pub lag_seconds: f64,
    /// How many rebuilds have been swapped in.
    pub generation: i64,
    /// True while a rebuild of this projection runs (it holds its lock).
    pub rebuilding: bool,
    /// The error the consumer stopped on (state `failed`).
    pub last_error: Option<String>,
    /// The event it stopped on.
    pub failed_event_id: Option<Uuid>,
    pub updated_at: DateTime<Utc>,
}

/// Where every consumer in `consumers` stands, in that order.
pub async fn status(db: &Db, consumers: &[Consumer]) -> Result<Vec<ConsumerStatus>, StorageError> {
    let backend = db.backend();
    let (unapplied, rebuilding) = match backend {
        Backend::Postgres => (
            "(e.transaction_id, e.global_position) > (c.transaction_id, c.position)
             AND e.transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
            "EXISTS (SELECT 1 FROM pg_locks l
                      WHERE l.locktype = 'advisory' AND l.granted
                        AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                        AND ((l.classid::bigint << 32) | l.objid::bigint)
                            = hashtextextended('karvon.feed.' || c.name || '__rebuild', 0))",
        ),
        Backend::Sqlite => ("e.global_position > c.position", "false"),
    };
    let select = format!(
        "SELECT c.name, {txid} AS txid, c.position, c.events_seen, c.updated_at, c.generation,
                c.failed_event_id, c.last_error, c.failed_at, {rebuilding} AS rebuilding,
                (SELECT count(*) FROM {events} e WHERE {unapplied}) AS lag,
                (SELECT e.recorded_at FROM {events} e WHERE {unapplied}
                  ORDER BY {order} LIMIT 1) AS oldest
           FROM projection_checkpoints c
          WHERE c.name = $1",
        txid = backend.xid_text("c.transaction_id"),
        events = backend.events(),
        order = backend.feed_order("e"),
    );
    let now = Utc::now();
    let mut statuses = Vec::with_capacity(consumers.len());
    for consumer in consumers {
        let row = on_pool!(db, read, pool => sqlx::query(&select)
            .bind(consumer.name())
            .fetch_optional(pool)
            .await?
            .map(|row| status_row(&row, consumer, now))
            .transpose()?);
        statuses.extend(row);
    }
    Ok(statuses)
}

fn status_row(
    row: &impl Portable,
    consumer: &Consumer,
    now: DateTime<Utc>,
) -> Result<ConsumerStatus, StorageError> {
    let name = row.text("name")?;
    let rebuilding = row.flag("rebuilding")? || RebuildClaim::running(&format!("{name}__rebuild"));
    let lag_events = row.int("lag")?;
    let lag_seconds = row.opt_time("oldest")?.map_or(0.0, |oldest| {
        ((now - oldest).num_milliseconds().max(0) as f64) / 1000.0
    });
    let failed = row.opt_time("failed_at")?.is_some();
    let state = if failed {
        "failed"
    } else if rebuilding {
        "rebuilding"
    } else if lag_events >= CATCHING_UP_EVENTS || lag_seconds >= CATCHING_UP_SECONDS {
        "catching_up"
    } else {
        "live"
    };
    Ok(ConsumerStatus {
        name,
        kind: consumer.kind(),
        state,
        position: row_position(row, "position")?.to_string(),
        events_seen: row.int("events_seen")?,
        lag_events,
        lag_seconds,
        generation: row.int("generation")?,
        rebuilding,
        last_error: row.opt_text("last_error")?,
        failed_event_id: row.opt_uuid("failed_event_id")?,
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
/// Checks again whenever `wakeup` reports a checkpoint move (and every
/// 250 ms at the latest, should a notification be lost), not in a loop.
pub async fn wait_until_applied(
    db: &Db,
    wakeup: &mut Wakeup,
    names: &[&str],
    target: &PositionToken,
    timeout: Duration,
) -> Result<bool, StorageError> {
    let deadline = Instant::now() + timeout;
    let mut resolved = None;
    loop {
        wakeup.mark_checkpoints_seen();
        if resolved.is_none() {
            resolved = feed::resolve(db, target).await?;
        }
        if let Some(position) = resolved {
            if reached(db, names, position).await? {
                return Ok(true);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        wakeup
            .checkpoint_moved(left.min(Duration::from_millis(250)))
            .await;
    }
}

/// The tenant of the event at a feed position (`None` when there is none).
pub async fn tenant_at(db: &Db, position: Position) -> Result<Option<String>, StorageError> {
    let select = match db.backend() {
        Backend::Postgres => {
            "SELECT metadata ->> 'tenant_id' FROM public.events
              WHERE global_position = $2 AND transaction_id = $1::text::xid8"
        }
        Backend::Sqlite => {
            "SELECT json_extract(metadata, '$.tenant_id') FROM events
              WHERE global_position = $2 AND $1 = '0'"
        }
    };
    let tenant: Option<Option<String>> = on_pool!(db, read, pool => sqlx::query_scalar(select)
        .bind(position.transaction_id.to_string())
        .bind(position.global_position)
        .fetch_optional(pool)
        .await?);
    Ok(tenant.flatten())
}
