//! The event store: postgres-es underneath, plus what cqrs-es leaves out.
//!
//! [`CommandExecutor`] runs a command against an aggregate loaded from
//! postgres-es and commits the events it emits, adding:
//! - event metadata (tenant, source, actor, correlation, occurred-at);
//! - idempotency keys: a trigger records the key in `command_log` inside the
//!   same transaction as the events, so a key is applied once or not at all;
//!   a retried key answers from the log without running the command again;
//! - optimistic-concurrency retries (a concurrent writer on the same stream
//!   makes the commit fail; the command is re-run on fresh state);
//! - the feed [`Position`] of the command's last event, for read-your-writes.

use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateContext, AggregateError, EventStore};
use karvon_projections::{EventMetadata, Position};
use postgres_es::PostgresEventRepository;
use sqlx::{PgPool, Row};

use crate::StorageError;

/// Events between snapshots of an aggregate.
const SNAPSHOT_EVERY: usize = 50;
/// Attempts before a command gives up on a hot stream.
const MAX_ATTEMPTS: u32 = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// Where the command's last event sits in the feed; for a command that
    /// changed nothing, the stream's latest event (if any).
    pub position: Option<Position>,
    /// Set when an earlier command with the same key already did the work.
    pub replayed: bool,
    /// The id the first execution answered with (keyed commands only).
    pub response_id: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    #[error(transparent)]
    Domain(E),
    #[error("the idempotency key was already used for a different request")]
    KeyReused,
    #[error("the stream is too busy; retry")]
    Contended,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub struct CommandExecutor<A: Aggregate> {
    store: PersistedEventStore<PostgresEventRepository, A>,
    pool: PgPool,
}

impl<A> CommandExecutor<A>
where
    A: Aggregate<Services = ()>,
    A::Command: Clone,
{
    pub fn new(pool: PgPool) -> Self {
        let repository = PostgresEventRepository::new(pool.clone());
        Self {
            store: PersistedEventStore::new_snapshot_store(repository, SNAPSHOT_EVERY),
            pool,
        }
    }

    /// Loads the aggregate's current state.
    pub async fn load(&self, aggregate_id: &str) -> Result<A, StorageError> {
        let mut context = self
            .store
            .load_aggregate(aggregate_id)
            .await
            .map_err(storage_error)?;
        Ok(std::mem::take(context.aggregate()))
    }

    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Executed, CommandError<A::Error>> {
        if let Some(executed) = self.replay(metadata).await? {
            return Ok(executed);
        }
        let map = metadata.to_map();
        for attempt in 0..MAX_ATTEMPTS {
            let mut context = self
                .store
                .load_aggregate(aggregate_id)
                .await
                .map_err(storage_error)?;
            let sink: EventSink<A> = EventSink::default();
            context
                .aggregate()
                .handle(command.clone(), &(), &sink)
                .await
                .map_err(CommandError::Domain)?;
            let events = sink.collect().await;
            if events.is_empty() {
                let position = self.stream_head(aggregate_id).await?;
                return Ok(Executed {
                    position,
                    replayed: false,
                    response_id: metadata.response_id.clone(),
                });
            }
            match self.store.commit(events, context, map.clone()).await {
                Ok(committed) => {
                    let sequence = committed.last().map_or(0, |event| event.sequence);
                    let position = self.position_of(aggregate_id, sequence).await?;
                    metrics::counter!("karvon_events_appended_total", "aggregate" => A::TYPE)
                        .increment(committed.len() as u64);
                    return Ok(Executed {
                        position,
                        replayed: false,
                        response_id: metadata.response_id.clone(),
                    });
                }
                Err(AggregateError::AggregateConflict) => {
                    // Either our key was used by a concurrent twin, or another
                    // writer advanced the stream: answer from the log or retry.
                    if let Some(executed) = self.replay(metadata).await? {
                        return Ok(executed);
                    }
                    let jitter = u64::from(attempt) * 3 + (u64::from(rand_byte()) % 7);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                }
                Err(error) => return Err(storage_error(error).into()),
            }
        }
        Err(CommandError::Contended)
    }

    /// The answer an earlier command with this key gave, if there was one.
    async fn replay(
        &self,
        metadata: &EventMetadata,
    ) -> Result<Option<Executed>, CommandError<A::Error>> {
        let Some(key) = &metadata.idempotency_key else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT transaction_id::text AS txid, last_position, response_id, request_hash
               FROM command_log WHERE tenant_id = $1 AND idempotency_key = $2",
        )
        .bind(&metadata.tenant_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(StorageError::from)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let stored_hash: Option<String> = row.get("request_hash");
        if stored_hash != metadata.request_hash {
            return Err(CommandError::KeyReused);
        }
        let txid: String = row.get("txid");
        let position = Position::new(parse_txid(&txid)?, row.get("last_position"));
        Ok(Some(Executed {
            position: Some(position),
            replayed: true,
            response_id: row.get("response_id"),
        }))
    }

    async fn position_of(
        &self,
        aggregate_id: &str,
        sequence: usize,
    ) -> Result<Option<Position>, StorageError> {
        let row = sqlx::query(
            "SELECT transaction_id::text AS txid, global_position FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(sequence as i64)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(Position::new(
                parse_txid(&row.get::<String, _>("txid"))?,
                row.get("global_position"),
            ))
        })
        .transpose()
    }

    async fn stream_head(&self, aggregate_id: &str) -> Result<Option<Position>, StorageError> {
        let row = sqlx::query(
            "SELECT transaction_id::text AS txid, global_position FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence DESC LIMIT 1",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(Position::new(
                parse_txid(&row.get::<String, _>("txid"))?,
                row.get("global_position"),
            ))
        })
        .transpose()
    }
}

pub(crate) fn parse_txid(text: &str) -> Result<u64, StorageError> {
    text.parse()
        .map_err(|_| StorageError::Corrupt(format!("transaction id {text:?}")))
}

fn storage_error<E: std::error::Error>(error: AggregateError<E>) -> StorageError {
    StorageError::EventStore(error.to_string())
}

/// A little jitter so retrying writers do not collide in lockstep.
fn rand_byte() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}
