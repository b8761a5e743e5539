//! The global event feed, read in an order no later commit can change.
//!
//! Positions come from a `BIGSERIAL` handed out before commit, so a later
//! position can become visible before an earlier one. The reader therefore
//! only returns events whose transaction is below the snapshot's `xmin`
//! (every such transaction has committed or rolled back) and orders by
//! `(transaction_id, global_position)`; checkpoints store that pair.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use karvon_projections::{EventMetadata, Position, PositionToken};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::StorageError;
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

const SELECT_BATCH: &str = "
SELECT transaction_id::text AS txid, global_position, aggregate_type, aggregate_id, sequence,
       event_type, event_version, payload, metadata, event_id, recorded_at
  FROM public.events
 WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY transaction_id, global_position
 LIMIT $3";

/// Up to `limit` settled events after `after`, in feed order.
pub async fn read_batch(
    conn: &mut PgConnection,
    after: Position,
    limit: i64,
) -> Result<Vec<FeedEvent>, StorageError> {
    let rows = sqlx::query(SELECT_BATCH)
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter().map(decode).collect()
}

/// The last settled position in the feed (what a caught-up reader reaches).
pub async fn settled_head(conn: &mut PgConnection) -> Result<Position, StorageError> {
    let row = sqlx::query(
        "SELECT transaction_id::text AS txid, global_position FROM public.events
          WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
    )
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => Ok(row_position(&row, "global_position")?),
        None => Ok(Position::START),
    }
}

fn decode(row: &PgRow) -> Result<FeedEvent, StorageError> {
    let recorded_at: DateTime<Utc> = row.try_get("recorded_at")?;
    let metadata_json: serde_json::Value = row.try_get("metadata")?;
    let map: HashMap<String, String> = serde_json::from_value(metadata_json)
        .map_err(|error| StorageError::Corrupt(format!("event metadata: {error}")))?;
    Ok(FeedEvent {
        position: row_position(row, "global_position")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        event_version: row.try_get("event_version")?,
        payload: row.try_get("payload")?,
        metadata: EventMetadata::from_map(&map, recorded_at),
        event_id: row.try_get("event_id")?,
        recorded_at,
    })
}

/// The feed position of a token's event, once it is committed.
pub async fn resolve(
    pool: &sqlx::PgPool,
    token: &PositionToken,
) -> Result<Option<Position>, StorageError> {
    let (aggregate_type, sequence, aggregate_id) = match token {
        PositionToken::Feed(position) => return Ok(Some(*position)),
        PositionToken::Stream {
            aggregate_type,
            sequence,
            aggregate_id,
        } => (aggregate_type, sequence, aggregate_id),
    };
    let row = sqlx::query(
        "SELECT transaction_id::text AS txid, global_position FROM public.events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .fetch_optional(pool)
    .await?;
    row.map(|row| row_position(&row, "global_position"))
        .transpose()
}
