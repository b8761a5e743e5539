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
    let select = match db.backend() {
        Backend::Postgres => format!(
            "SELECT {COLUMNS_POSTGRES} FROM public.events
              WHERE metadata ->> 'tenant_id' = $1
                AND (transaction_id, global_position) > ($2::text::xid8, $3)
                AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY transaction_id, global_position LIMIT $4"
        ),
        Backend::Sqlite => format!(
            "SELECT {COLUMNS_SQLITE} FROM events
              WHERE json_extract(metadata, '$.tenant_id') = $1 AND global_position > $3
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
