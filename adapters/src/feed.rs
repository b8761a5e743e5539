//! The global event feed, read in an order no later commit can change.
//!
//! Positions come from a `BIGSERIAL` handed out before commit, so a later
//! position can become visible before an earlier one. The reader therefore
//! only returns events whose transaction is below the snapshot's `xmin`
//! (every such transaction has committed or rolled back) and orders by
//! `(transaction_id, global_position)`; checkpoints store that pair.
//! On SQLite, where writes are serialised, the order is `global_position`
//! and `transaction_id` is always 0.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use karvon_projections::{EventMetadata, Position, PositionToken};
use uuid::Uuid;

use crate::StorageError;
use crate::db::{Backend, Conn, Db, Portable, on_conn, on_pool};
use crate::store::row_position;

#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: serde_json::Value,
    pub metadata: EventMetadata,
    pub event_id: Uuid,
    pub recorded_at: DateTime<Utc>,
}

/// The aggregate types a consumer reads (`None`: every event). The feed
/// still walks every event, so checkpoints and the one-event steps that
/// isolate a failure mean the same; events of other types are read
/// without their payload and metadata and not handed to the consumer.
pub type Wanted = Option<&'static [&'static str]>;

/// One step's read of the feed.
#[derive(Debug, Default)]
pub struct FeedBatch {
    /// The wanted events, in feed order.
    pub events: Vec<FeedEvent>,
    /// The position of the last event read, wanted or not: how far the
    /// consumer may move its checkpoint.
    pub last: Option<Position>,
    /// Events read, wanted or not.
    pub read: usize,
}

/// `aggregate_type IN ('A', 'B')` for `wanted` (`TRUE` for every type).
/// The names are the aggregates' `TYPE` constants; one that is not a plain
/// identifier is refused rather than quoted.
fn wanted_condition(wanted: Wanted) -> Result<String, StorageError> {
    let Some(types) = wanted else {
        return Ok("TRUE".to_string());
    };
    let mut listed = Vec::with_capacity(types.len());
    for name in types {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StorageError::Corrupt(format!(
                "aggregate type {name:?} is not an identifier"
            )));
        }
        listed.push(format!("'{name}'"));
    }
    if listed.is_empty() {
        return Ok("FALSE".to_string());
    }
    Ok(format!("aggregate_type IN ({})", listed.join(", ")))
}

/// Up to `limit` settled events after `after`, in feed order, of which
/// those `wanted` are decoded.
pub async fn read_batch(
    conn: &mut Conn<'_>,
    after: Position,
    limit: i64,
    wanted: Wanted,
) -> Result<FeedBatch, StorageError> {
    let condition = wanted_condition(wanted)?;
    let select = match conn.backend() {
        Backend::Postgres => format!(
            "SELECT transaction_id::text AS txid, global_position, aggregate_type, aggregate_id,
                    sequence, event_type, event_version,
                    CASE WHEN {condition} THEN payload END AS payload,
                    CASE WHEN {condition} THEN metadata END AS metadata, event_id, recorded_at
               FROM public.events
              WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
                AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY transaction_id, global_position
              LIMIT $3"
        ),
        // SQLite commits one writer at a time, so `global_position` order
        // is commit order and every visible event is settled.
        Backend::Sqlite => format!(
            "SELECT '0' AS txid, global_position, aggregate_type, aggregate_id, sequence,
                    event_type, event_version,
                    CASE WHEN {condition} THEN payload END AS payload,
                    CASE WHEN {condition} THEN metadata END AS metadata, event_id, recorded_at
               FROM events
              WHERE global_position > $2 AND $1 IS NOT NULL
              ORDER BY global_position
              LIMIT $3"
        ),
    };
    let is_wanted =
        |aggregate_type: &str| wanted.is_none_or(|types| types.contains(&aggregate_type));
    on_conn!(conn, c => {
        let rows = sqlx::query(&select)
            .bind(after.transaction_id.to_string())
            .bind(after.global_position)
            .bind(limit)
            .fetch_all(&mut **c)
            .await?;
        let mut batch = FeedBatch {
            events: Vec::with_capacity(rows.len()),
            last: None,
            read: rows.len(),
        };
        for row in &rows {
            batch.last = Some(row_position(row, "global_position")?);
            if is_wanted(&row.text("aggregate_type")?) {
                batch.events.push(decode(row)?);
            }
        }
        Ok(batch)
    })
}

pub(crate) fn decode(row: &impl Portable) -> Result<FeedEvent, StorageError> {
    let recorded_at = row.time("recorded_at")?;
    let map: HashMap<String, String> = serde_json::from_value(row.json("metadata")?)
        .map_err(|error| StorageError::Corrupt(format!("event metadata: {error}")))?;
    Ok(FeedEvent {
        position: row_position(row, "global_position")?,
        aggregate_type: row.text("aggregate_type")?,
        aggregate_id: row.text("aggregate_id")?,
        sequence: row.int("sequence")?,
        event_type: row.text("event_type")?,
        event_version: row.text("event_version")?,
        payload: row.json("payload")?,
        metadata: EventMetadata::from_map(&map, recorded_at)
            .ok_or_else(|| StorageError::Corrupt("event metadata has no tenant_id".to_string()))?,
        event_id: row.uuid("event_id")?,
        recorded_at,
    })
}

/// The feed position of a token's event, once it is committed.
pub async fn resolve(db: &Db, token: &PositionToken) -> Result<Option<Position>, StorageError> {
    let (aggregate_type, sequence, aggregate_id) = match token {
        PositionToken::Feed(position) => return Ok(Some(*position)),
        PositionToken::Stream {
            aggregate_type,
            sequence,
            aggregate_id,
        } => (aggregate_type, sequence, aggregate_id),
    };
    let select = match db.backend() {
        Backend::Postgres => {
            "SELECT transaction_id::text AS txid, global_position FROM public.events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3"
        }
        Backend::Sqlite => {
            "SELECT '0' AS txid, global_position FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3"
        }
    };
    on_pool!(db, read, pool => sqlx::query(select)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .fetch_optional(pool)
        .await?
        .map(|row| row_position(&row, "global_position"))
        .transpose())
}

/// An event named without decoding its payload or metadata: what the
/// runner records when a consumer cannot consume it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub event_id: Uuid,
    pub position: Position,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
}

/// The next settled event after `after`, undecoded.
pub async fn peek(conn: &mut Conn<'_>, after: Position) -> Result<Option<EventRef>, StorageError> {
    let backend = conn.backend();
    let (events, txid, settled) = match backend {
        Backend::Postgres => (
            "public.events",
            "transaction_id::text",
            "(transaction_id, global_position) > ($1::text::xid8, $2)
             AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
        ),
        Backend::Sqlite => ("events", "'0'", "global_position > $2 AND $1 IS NOT NULL"),
    };
    let select = format!(
        "SELECT {txid} AS txid, e.global_position, e.event_id, e.aggregate_type, e.aggregate_id,
                e.sequence, e.event_type
           FROM {events} e WHERE {settled}
          ORDER BY {order} LIMIT 1",
        order = backend.feed_order("e")
    );
    on_conn!(conn, c => sqlx::query(&select)
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .fetch_optional(&mut **c)
        .await?
        .map(|row| {
            Ok(EventRef {
                event_id: row.uuid("event_id")?,
                position: row_position(&row, "global_position")?,
                aggregate_type: row.text("aggregate_type")?,
                aggregate_id: row.text("aggregate_id")?,
                sequence: row.int("sequence")?,
                event_type: row.text("event_type")?,
            })
        })
        .transpose())
}
