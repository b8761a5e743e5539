//! The audit trail: one stream's events in order, and a tenant's events in
//! feed order, paged — the raw facts behind every read model, straight from
//! the event store.

use karvon_projections::Position;

use crate::StorageError;
use crate::db::{Backend, Db, on_pool};
use crate::feed::{FeedEvent, decode};

const COLUMNS_POSTGRES: &str = "transaction_id::text AS txid, global_position, aggregate_type,
       aggregate_id, sequence, event_type, event_version, payload, metadata, event_id,
       recorded_at";
const COLUMNS_SQLITE: &str = "'0' AS txid, global_position, aggregate_type, aggregate_id,
       sequence, event_type, event_version, payload, metadata, event_id, recorded_at";

/// Every event of one stream (`aggregate_id` as stored, with its tenant
/// prefix), oldest first, at most `limit`.
pub async fn stream(
    db: &Db,
    aggregate_type: &str,
    aggregate_id: &str,
    limit: i64,
) -> Result<Vec<FeedEvent>, StorageError> {
    let columns = match db.backend() {
        Backend::Postgres => COLUMNS_POSTGRES,
        Backend::Sqlite => COLUMNS_SQLITE,
    };
    let select = format!(
        "SELECT {columns} FROM {} WHERE aggregate_type = $1 AND aggregate_id = $2
          ORDER BY sequence LIMIT $3",
        db.backend().events()
    );
    on_pool!(db, read, pool => sqlx::query(&select)
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(decode)
        .collect())
}

/// Up to `limit` settled events of `tenant` after `after`, in feed order
/// (the order every consumer sees).
pub async fn tenant_feed(
    db: &Db,
    tenant: &str,
    after: Position,
    limit: i64,
) -> Result<Vec<FeedEvent>, StorageError> {
    settled_events(db, Some(tenant), after, limit).await
}

/// Settled events of every tenant after `after`, in feed order, at most
/// `limit`: what one reader per instance fans out to the live streams.
pub async fn settled_feed(
    db: &Db,
    after: Position,
    limit: i64,
) -> Result<Vec<FeedEvent>, StorageError> {
    settled_events(db, None, after, limit).await
}

async fn settled_events(
    db: &Db,
    tenant: Option<&str>,
    after: Position,
    limit: i64,
) -> Result<Vec<FeedEvent>, StorageError> {
    let select = match db.backend() {
        Backend::Postgres => format!(
            "SELECT {COLUMNS_POSTGRES} FROM public.events
              WHERE ($1::text IS NULL OR metadata ->> 'tenant_id' = $1)
                AND (transaction_id, global_position) > ($2::text::xid8, $3)
                AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY transaction_id, global_position LIMIT $4"
        ),
        Backend::Sqlite => format!(
            "SELECT {COLUMNS_SQLITE} FROM events
              WHERE ($1 IS NULL OR json_extract(metadata, '$.tenant_id') = $1)
                AND global_position > $3
                AND $2 IS NOT NULL
              ORDER BY global_position LIMIT $4"
        ),
    };
    on_pool!(db, read, pool => sqlx::query(&select)
        .bind(tenant)
        .bind(after.transaction_id.to_string())
        .bind(after.global_position)
        .bind(limit)
        .fetch_all(pool)
        .await?
        .iter()
        .map(decode)
        .collect())
}

/// What `karvon events verify` found.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Verification {
    pub events: i64,
    pub streams: i64,
    /// Streams whose sequences do not run 1, 2, … without a hole:
    /// (aggregate type, aggregate id, events, highest sequence).
    pub streams_with_holes: Vec<(String, String, i64, i64)>,
    /// Events missing tenant, occurrence time, source, actor or
    /// correlation id: their event ids.
    pub events_without_metadata: Vec<String>,
    /// Events carrying an idempotency key that `command_log` lacks.
    pub unlogged_keys: i64,
}

impl Verification {
    pub fn is_clean(&self) -> bool {
        self.streams_with_holes.is_empty()
            && self.events_without_metadata.is_empty()
            && self.unlogged_keys == 0
    }
}

/// Checks the whole store: sequences without holes, metadata on every
/// event, every idempotency key logged.
pub async fn verify(db: &Db) -> Result<Verification, StorageError> {
    let events_table = db.backend().events();
    let holes = format!(
        "SELECT aggregate_type, aggregate_id, COUNT(*) AS n, MAX(sequence) AS top, MIN(sequence) AS low
           FROM {events_table} GROUP BY aggregate_type, aggregate_id"
    );
    let (tenant, key) = match db.backend() {
        Backend::Postgres => (
            "e.metadata ->> 'tenant_id'",
            "e.metadata ->> 'idempotency_key'",
        ),
        Backend::Sqlite => (
            "json_extract(e.metadata, '$.tenant_id')",
            "json_extract(e.metadata, '$.idempotency_key')",
        ),
    };
    let unlogged = format!(
        "SELECT COUNT(*) FROM {events_table} e
          WHERE {key} IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM command_log c
                             WHERE c.tenant_id = {tenant} AND c.idempotency_key = {key})"
    );
    let mut verification = Verification::default();
    on_pool!(db, read, pool => {
        for row in sqlx::query(&holes).fetch_all(pool).await? {
            use sqlx::Row;
            let count: i64 = row.try_get("n")?;
            let top: i64 = row.try_get("top")?;
            let low: i64 = row.try_get("low")?;
            verification.streams += 1;
            verification.events += count;
            if low != 1 || top != count {
                verification.streams_with_holes.push((
                    row.try_get("aggregate_type")?,
                    row.try_get("aggregate_id")?,
                    count,
                    top,
                ));
            }
        }
        verification.unlogged_keys = sqlx::query_scalar(&unlogged).fetch_one(pool).await?;
        Ok::<(), StorageError>(())
    })?;
    // Metadata: every event read back through the feed's decoder, which
    // refuses an event without a tenant.
    let columns = match db.backend() {
        Backend::Postgres => COLUMNS_POSTGRES,
        Backend::Sqlite => COLUMNS_SQLITE,
    };
    let mut after = -1i64;
    loop {
        let page = format!(
            "SELECT {columns} FROM {events_table} WHERE global_position > $1
              ORDER BY global_position LIMIT 5000"
        );
        let rows: Vec<(i64, Result<FeedEvent, StorageError>, String)> = on_pool!(db, read, pool => {
            use sqlx::Row;
            sqlx::query(&page)
                .bind(after)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| {
                    let position: i64 = row.try_get("global_position")?;
                    let id: String = row
                        .try_get::<uuid::Uuid, _>("event_id")
                        .map(|id| id.to_string())
                        .or_else(|_| row.try_get::<String, _>("event_id"))?;
                    Ok((position, decode(row), id))
                })
                .collect::<Result<Vec<_>, StorageError>>()?
        });
        let Some((last, _, _)) = rows.last() else {
            break;
        };
        after = *last;
        for (_, event, id) in rows {
            let complete = event.is_ok_and(|event| {
                let metadata = &event.metadata;
                !metadata.source.is_empty()
                    && !metadata.actor.is_empty()
                    && !metadata.correlation_id.is_empty()
            });
            if !complete {
                verification.events_without_metadata.push(id);
            }
        }
    }
    Ok(verification)
}

/// Every event of `tenant` recorded in `[from, to)` (either end open), in
/// feed order, handed to `write` one by one (`karvon events export`).
/// Answers how many were written.
pub async fn export(
    db: &Db,
    tenant: &str,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
    mut write: impl FnMut(&FeedEvent) -> std::io::Result<()>,
) -> Result<u64, StorageError> {
    let mut after = Position::START;
    let mut written = 0;
    loop {
        let events = tenant_feed(db, tenant, after, 5000).await?;
        let Some(last) = events.last() else {
            return Ok(written);
        };
        after = last.position;
        for event in &events {
            let in_range = from.is_none_or(|from| event.recorded_at >= from)
                && to.is_none_or(|to| event.recorded_at < to);
            if in_range {
                write(event)
                    .map_err(|error| StorageError::Unavailable(format!("writing: {error}")))?;
                written += 1;
            }
        }
    }
}

/// The position of the last settled event (where a live follower of the
/// feed starts); the feed's start when there is none.
pub async fn head(db: &Db) -> Result<Position, StorageError> {
    let select = match db.backend() {
        Backend::Postgres => {
            "SELECT transaction_id::text AS txid, global_position FROM public.events
              WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY transaction_id DESC, global_position DESC LIMIT 1"
        }
        Backend::Sqlite => {
            "SELECT '0' AS txid, global_position FROM events ORDER BY global_position DESC LIMIT 1"
        }
    };
    on_pool!(db, read, pool => sqlx::query(select)
        .fetch_optional(pool)
        .await?
        .map(|row| crate::store::row_position(&row, "global_position"))
        .transpose()
        .map(|position| position.unwrap_or(Position::START)))
}
