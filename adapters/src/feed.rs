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
use crate::store::{parse_txid, row_position};

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

/// The aggregate types a consumer reads (`None`: every event). Events of
/// other types are passed over inside the database (an index per
/// aggregate type finds the wanted ones), so a consumer of meters does not
/// read the sales, and the other way round.
pub type Wanted = Option<&'static [&'static str]>;

/// One step's read of the feed.
#[derive(Debug, Default)]
pub struct FeedBatch {
    /// The wanted events, in feed order.
    pub events: Vec<FeedEvent>,
    /// How far the consumer may move its checkpoint: the last event read,
    /// or, when fewer than the limit were wanted, the last settled event
    /// of any type (nothing before it is left to read). `None`: nothing
    /// new.
    pub last: Option<Position>,
    /// Events read (the wanted ones).
    pub read: usize,
}

impl FeedBatch {
    /// What a step reports as done: the events read, or 1 when it only
    /// moved the checkpoint past other types' events (so whoever waits
    /// for the checkpoint is woken).
    pub fn progress(&self) -> usize {
        match (self.read, self.last) {
            (0, Some(_)) => 1,
            (read, _) => read,
        }
    }
}

/// The wanted types as SQL literals. The names are the aggregates' `TYPE`
/// constants; one that is not a plain identifier is refused rather than
/// quoted.
fn literals(types: &[&str]) -> Result<Vec<String>, StorageError> {
    types
        .iter()
        .map(|name| {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(StorageError::Corrupt(format!(
                    "aggregate type {name:?} is not an identifier"
                )));
            }
            Ok(format!("'{name}'"))
        })
        .collect()
}

/// The table and the condition for "settled and after `($1, $2)`".
fn settled(backend: Backend) -> (&'static str, &'static str) {
    match backend {
        Backend::Postgres => (
            "public.events",
            "(transaction_id, global_position) > ($1::text::xid8, $2)
             AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())",
        ),
        // SQLite commits one writer at a time, so `global_position` order
        // is commit order and every visible event is settled.
        Backend::Sqlite => ("events", "global_position > $2 AND $1 IS NOT NULL"),
    }
}

/// `columns` of the first `$3` settled events after `($1, $2)` whose type
/// is among `types`, in feed order: one ordered index range per type,
/// merged. `columns` must include `global_position`; on PostgreSQL
/// `transaction_id` is added.
fn next_of_types(backend: Backend, types: &[&str], columns: &str) -> Result<String, StorageError> {
    let (events, settled) = settled(backend);
    let columns = match backend {
        Backend::Postgres => format!("transaction_id, {columns}"),
        Backend::Sqlite => columns.to_string(),
    };
    let order = backend.feed_order("u");
    let inner_order = order.replace("u.", "");
    let ranges: Vec<String> = literals(types)?
        .iter()
        .map(|name| {
            format!(
                "SELECT * FROM (SELECT {columns} FROM {events}
                                 WHERE aggregate_type = {name} AND {settled}
                                 ORDER BY {inner_order} LIMIT $3) AS r"
            )
        })
        .collect();
    let ranges = if ranges.is_empty() {
        format!("SELECT {columns} FROM {events} WHERE FALSE")
    } else {
        ranges.join(" UNION ALL ")
    };
    Ok(format!(
        "SELECT * FROM ({ranges}) AS u ORDER BY {order} LIMIT $3"
    ))
}

const EVENT_COLUMNS: &str = "global_position, aggregate_type, aggregate_id,
    sequence, event_type, event_version, payload, metadata, event_id, recorded_at";

/// Up to `limit` settled events after `after`, in feed order, of the
/// `wanted` types.
pub async fn read_batch(
    conn: &mut Conn<'_>,
    after: Position,
    limit: i64,
    wanted: Wanted,
) -> Result<FeedBatch, StorageError> {
    let backend = conn.backend();
    let txid = match backend {
        Backend::Postgres => "transaction_id::text",
        Backend::Sqlite => "'0'",
    };
    let select = match wanted {
        None => {
            let (events, settled) = settled(backend);
            let no_head = match backend {
                Backend::Postgres => "NULL::text AS head_txid, NULL::bigint AS head_position",
                Backend::Sqlite => "NULL AS head_txid, NULL AS head_position",
            };
            format!(
                "SELECT {txid} AS txid, global_position, aggregate_type, aggregate_id, sequence,
                        event_type, event_version, payload, metadata, event_id, recorded_at,
                        {no_head}
                   FROM {events} e WHERE {settled}
                  ORDER BY {order} LIMIT $3",
                order = backend.feed_order("e")
            )
        }
        // The wanted events beside the last settled event, in one
        // statement (one snapshot): when fewer than `limit` are wanted,
        // every event up to that last one has been looked at.
        Some(types) => {
            let head = match backend {
                Backend::Postgres => {
                    "SELECT transaction_id::text AS head_txid, global_position AS head_position
                       FROM public.events
                      WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                      ORDER BY transaction_id DESC, global_position DESC LIMIT 1"
                }
                Backend::Sqlite => {
                    "SELECT '0' AS head_txid, max(global_position) AS head_position FROM events"
                }
            };
            format!(
                "WITH wanted AS ({}), head AS ({head})
                 SELECT {txid} AS txid, w.global_position, w.aggregate_type, w.aggregate_id,
                        w.sequence, w.event_type, w.event_version, w.payload, w.metadata,
                        w.event_id, w.recorded_at, h.head_txid, h.head_position
                   FROM head h LEFT JOIN wanted w ON TRUE
                  ORDER BY {}",
                next_of_types(backend, types, EVENT_COLUMNS)?,
                backend.feed_order("w"),
                txid = txid.replace("transaction_id", "w.transaction_id"),
            )
        }
    };
    on_conn!(conn, c => {
        let rows = sqlx::query(&select)
            .bind(after.transaction_id.to_string())
            .bind(after.global_position)
            .bind(limit)
            .fetch_all(&mut **c)
            .await?;
        let mut events = Vec::with_capacity(rows.len());
        let mut head = None;
        for row in &rows {
            if head.is_none() && let Some(position) = row.opt_int("head_position")? {
                head = Some(Position::new(parse_txid(&row.text("head_txid")?)?, position));
            }
            if row.opt_text("aggregate_type")?.is_some() {
                events.push(decode(row)?);
            }
        }
        let last = if events.len() as i64 >= limit {
            events.last().map(|event| event.position)
        } else {
            // The last settled event; when every type is read (no head),
            // the last one read.
            head.filter(|head| *head > after)
                .or_else(|| events.last().map(|event| event.position))
        };
        Ok(FeedBatch { read: events.len(), events, last })
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

/// The next settled event after `after` of the `wanted` types, undecoded.
pub async fn peek(
    conn: &mut Conn<'_>,
    after: Position,
    wanted: Wanted,
) -> Result<Option<EventRef>, StorageError> {
    let backend = conn.backend();
    let columns = "global_position, event_id, aggregate_type, aggregate_id, sequence, event_type";
    let next = match wanted {
        Some(types) => next_of_types(backend, types, columns)?,
        None => {
            let (events, settled) = settled(backend);
            let txid = match backend {
                Backend::Postgres => "transaction_id, ",
                Backend::Sqlite => "",
            };
            format!(
                "SELECT {txid}{columns} FROM {events} e WHERE {settled} ORDER BY {} LIMIT $3",
                backend.feed_order("e")
            )
        }
    };
    let txid = match backend {
        Backend::Postgres => "n.transaction_id::text",
        Backend::Sqlite => "'0'",
    };
    let select = format!(
        "SELECT {txid} AS txid, n.global_position, n.event_id, n.aggregate_type, n.aggregate_id,
                n.sequence, n.event_type
           FROM ({next}) AS n"
    );
    on_conn!(conn, c => sqlx::query(&select)
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .bind(1_i64)
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
