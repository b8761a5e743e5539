//! The event store: cqrs-es aggregates over our own appends (the same
//! tables and encoding as postgres-es / sqlite-es), plus what cqrs-es
//! leaves out.
//!
//! [`CommandExecutor`] runs a command against an aggregate loaded from
//! postgres-es and commits the events it emits, adding:
//! - event metadata (tenant, source, actor, correlation, occurred-at);
//! - idempotency keys: a trigger records the key in `command_log` inside the
//!   same transaction as the events, so a key is applied once or not at all;
//!   a retried key answers from the log without running the command again;
//! - optimistic-concurrency retries (a concurrent writer on the same stream
//!   makes the commit fail; the command is re-run on fresh state);
//! - a [`PositionToken`] naming the command's last event, for read-your-writes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::EventStoreAggregateContext;
use karvon_projections::{EventMetadata, Position, PositionToken};

use crate::StorageError;
use crate::db::{Db, Portable, on_pool};

/// Attempts before a command gives up on a hot stream.
const MAX_ATTEMPTS: u32 = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// The command's last event; for a command that changed nothing, the
    /// stream's latest event (none for a stream that has none).
    pub position: Option<PositionToken>,
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
    db: Db,
    /// The last state this executor committed per stream: a command on a
    /// warm stream skips the snapshot load. Trusted only as far as the
    /// append's optimistic lock confirms it: a stale entry (another
    /// instance wrote) makes the commit conflict, and the command is run
    /// again on loaded state; an answer without events or a refusal is
    /// always confirmed on loaded state.
    warm: std::sync::Mutex<HashMap<String, Warm<A>>>,
    /// Streams kept warm at most; beyond it the cache starts over.
    warm_limit: usize,
    /// One turn at a time per stream within this instance: concurrent
    /// commands on a hot stream queue instead of colliding and retrying.
    turns: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A stream's state as last committed by this executor.
struct Warm<A> {
    aggregate: A,
    sequence: usize,
    snapshot: Option<usize>,
}

/// Streams kept warm at most by default.
const WARM_LIMIT: usize = 100_000;

/// A batch write stores a stream's snapshot when its sequence crosses a
/// multiple of this (and for a new stream); loading applies the events
/// after the snapshot. A stream with a long memory (a meter's recent
/// readings) is then not rewritten whole for every few events it gains.
pub const SNAPSHOT_EVERY: usize = 32;

// A single command's append is ours on both backends ([`append_postgres`]:
// one statement; [`append_sqlite`]: one transaction), and so is loading
// ([`CommandExecutor::load_many`]).
impl<A> CommandExecutor<A>
where
    A: Aggregate<Services = ()> + Clone,
    A::Command: Clone,
{
    pub fn new(db: Db) -> Self {
        // Every stream has a snapshot, updated in the same transaction as
        // each append (batch writes: every SNAPSHOT_EVERY events): loading
        // is one indexed row plus the events after it. Events stay the
        // source of truth for projections; snapshots only serve commands.
        Self {
            db,
            warm: Default::default(),
            warm_limit: WARM_LIMIT,
            turns: Default::default(),
        }
    }

    /// Keeps at most `limit` streams warm (for aggregates whose state is
    /// large, such as a meter's remembered readings).
    pub fn with_warm_limit(mut self, limit: usize) -> Self {
        self.warm_limit = limit;
        self
    }

    fn warm_context(&self, aggregate_id: &str) -> Option<EventStoreAggregateContext<A>> {
        let warm = self.warm.lock().ok()?;
        let entry = warm.get(aggregate_id)?;
        Some(EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_string(),
            aggregate: entry.aggregate.clone(),
            current_sequence: entry.sequence,
            current_snapshot: entry.snapshot,
        })
    }

    fn keep_warm(&self, aggregate_id: &str, entry: Option<Warm<A>>) {
        if let Ok(mut warm) = self.warm.lock() {
            match entry {
                Some(entry) => {
                    if warm.len() >= self.warm_limit {
                        warm.clear();
                    }
                    warm.insert(aggregate_id.to_string(), entry);
                }
                None => {
                    warm.remove(aggregate_id);
                }
            }
        }
    }

    /// Waits for this stream's turn in this instance.
    async fn turn(&self, aggregate_id: &str) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let lock = {
            let mut turns = self.turns.lock().ok()?;
            turns.entry(aggregate_id.to_string()).or_default().clone()
        };
        Some(lock.lock_owned().await)
    }

    /// Forgets the stream's turn lock once nobody waits for it.
    fn end_turn(&self, aggregate_id: &str, turn: Option<tokio::sync::OwnedMutexGuard<()>>) {
        drop(turn);
        if let Ok(mut turns) = self.turns.lock() {
            if turns
                .get(aggregate_id)
                .is_some_and(|lock| Arc::strong_count(lock) == 1)
            {
                turns.remove(aggregate_id);
            }
        }
    }

    /// Loads the aggregate's current state.
    pub async fn load(&self, aggregate_id: &str) -> Result<A, StorageError> {
        Ok(self.load_context(aggregate_id).await?.aggregate)
    }

    /// The stream as stored: its snapshot and the events after it.
    async fn load_context(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, StorageError> {
        let loaded = self
            .load_many(&[aggregate_id.to_string()])
            .await?
            .pop()
            .ok_or_else(|| StorageError::EventStore("load_many answered no stream".into()))?;
        Ok(EventStoreAggregateContext {
            aggregate_id: loaded.aggregate_id,
            aggregate: loaded.state,
            current_sequence: loaded.sequence,
            current_snapshot: loaded.snapshot,
        })
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
        let turn = self.turn(aggregate_id).await;
        let executed = self.execute_in_turn(aggregate_id, command, metadata).await;
        self.end_turn(aggregate_id, turn);
        executed
    }

    async fn execute_in_turn(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<Executed, CommandError<A::Error>> {
        let map = metadata.to_map();
        let mut attempt = 0;
        let mut trust_warm = true;
        while attempt < MAX_ATTEMPTS {
            let warm = if trust_warm {
                self.warm_context(aggregate_id)
            } else {
                None
            };
            let from_warm = warm.is_some();
            let context = match warm {
                Some(context) => context,
                None => self.load_context(aggregate_id).await?,
            };
            // Handle on a copy: `EventSink::write` applies each event to the
            // aggregate it is given, and cqrs-es 0.5's snapshot stores apply
            // the committed events to the context's aggregate once more when
            // they write the snapshot. Handing `commit` the untouched state
            // keeps the snapshot from counting every event twice.
            let mut working = context.aggregate.clone();
            let sink: EventSink<A> = EventSink::default();
            let handled = working.handle(command.clone(), &(), &sink).await;
            let events = sink.collect().await;
            if from_warm && (handled.is_err() || events.is_empty()) {
                // Nothing for the append to confirm: decide on loaded state.
                trust_warm = false;
                continue;
            }
            handled.map_err(CommandError::Domain)?;
            if events.is_empty() {
                let sequence = context.current_sequence;
                if !self.log_no_op(aggregate_id, sequence, metadata).await? {
                    // A twin with the same key got there first.
                    if let Some(executed) = self.replay(metadata).await? {
                        return Ok(executed);
                    }
                }
                return Ok(Executed {
                    position: (sequence > 0).then(|| stream_token::<A>(aggregate_id, sequence)),
                    replayed: false,
                    response_id: metadata.response_id.clone(),
                });
            }
            let mut map = map.clone();
            if metadata.idempotency_key.is_some() {
                // Tells this commit's events from a concurrent twin's in the
                // SQLite key trigger (PostgreSQL uses the transaction id).
                map.insert("commit_id".to_string(), uuid::Uuid::new_v4().to_string());
            }
            let next = Warm {
                aggregate: working,
                sequence: context.current_sequence + events.len(),
                snapshot: Some(context.current_snapshot.map_or(1, |snapshot| snapshot + 1)),
            };
            let count = events.len();
            match self.append(aggregate_id, events, context, &next, map).await {
                Ok(()) => {
                    let position = stream_token::<A>(aggregate_id, next.sequence);
                    self.keep_warm(aggregate_id, Some(next));
                    self.db.notify_appended();
                    metrics::counter!("karvon_events_appended_total", "aggregate" => A::TYPE)
                        .increment(count as u64);
                    return Ok(Executed {
                        position: Some(position),
                        replayed: false,
                        response_id: metadata.response_id.clone(),
                    });
                }
                Err(Appended::Conflict) => {
                    self.keep_warm(aggregate_id, None);
                    trust_warm = false;
                    // Either our key was used by a concurrent twin, or another
                    // writer advanced the stream: answer from the log or retry.
                    if let Some(executed) = self.replay(metadata).await? {
                        return Ok(executed);
                    }
                    let jitter = u64::from(attempt) * 3 + (u64::from(rand_byte()) % 7);
                    tokio::time::sleep(Duration::from_millis(jitter)).await;
                    attempt += 1;
                }
                Err(Appended::Failed(error)) => {
                    self.keep_warm(aggregate_id, None);
                    return Err(error.into());
                }
            }
        }
        Err(CommandError::Contended)
    }

    /// Appends a command's events and the stream's new snapshot, atomically;
    /// a concurrent writer (or a twin with the same idempotency key) makes
    /// it a [`Appended::Conflict`].
    async fn append(
        &self,
        aggregate_id: &str,
        events: Vec<A::Event>,
        context: EventStoreAggregateContext<A>,
        next: &Warm<A>,
        metadata: HashMap<String, String>,
    ) -> Result<(), Appended> {
        match &self.db {
            Db::Postgres(pool) => {
                append_postgres(pool, aggregate_id, &events, &context, next, &metadata).await
            }
            Db::Sqlite(sqlite) => {
                append_sqlite(
                    &sqlite.writer,
                    aggregate_id,
                    &events,
                    &context,
                    next,
                    &metadata,
                )
                .await
            }
        }
    }

    /// Records the key of a command that changed nothing, so that reusing
    /// the key with another request still answers 422. False when the key
    /// was already taken.
    async fn log_no_op(
        &self,
        aggregate_id: &str,
        sequence: usize,
        metadata: &EventMetadata,
    ) -> Result<bool, StorageError> {
        let Some(key) = &metadata.idempotency_key else {
            return Ok(true);
        };
        let transaction = match self.db.backend() {
            crate::db::Backend::Postgres => "pg_current_xact_id()",
            crate::db::Backend::Sqlite => "NULL",
        };
        let column = match self.db.backend() {
            crate::db::Backend::Postgres => "transaction_id",
            crate::db::Backend::Sqlite => "commit_id",
        };
        let insert = format!(
            "INSERT INTO command_log (tenant_id, idempotency_key, {column}, last_position,
                                      last_sequence, aggregate_type, aggregate_id, response_id,
                                      request_hash)
             VALUES ($1, $2, {transaction}, 0, $3, $4, $5, $6, $7)
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING"
        );
        let inserted = on_pool!(&self.db, write, pool => sqlx::query(&insert)
            .bind(&metadata.tenant_id)
            .bind(key)
            .bind(sequence as i64)
            .bind(A::TYPE)
            .bind(aggregate_id)
            .bind(&metadata.response_id)
            .bind(&metadata.request_hash)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(inserted == 1)
    }

    /// The answer an earlier command with this key gave, if there was one.
    async fn replay(
        &self,
        metadata: &EventMetadata,
    ) -> Result<Option<Executed>, CommandError<A::Error>> {
        let Some(key) = &metadata.idempotency_key else {
            return Ok(None);
        };
        const SELECT_KEY: &str =
            "SELECT aggregate_type, aggregate_id, last_sequence, response_id, request_hash
               FROM command_log WHERE tenant_id = $1 AND idempotency_key = $2";
        let found = match &self.db {
            Db::Postgres(pool) => sqlx::query(SELECT_KEY)
                .bind(&metadata.tenant_id)
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(StorageError::from)?
                .map(|row| logged(&row))
                .transpose()?,
            Db::Sqlite(sqlite) => sqlx::query(SELECT_KEY)
                .bind(&metadata.tenant_id)
                .bind(key)
                .fetch_optional(&sqlite.writer)
                .await
                .map_err(StorageError::from)?
                .map(|row| logged(&row))
                .transpose()?,
        };
        let Some((executed, stored_hash)) = found else {
            return Ok(None);
        };
        if stored_hash != metadata.request_hash {
            return Err(CommandError::KeyReused);
        }
        Ok(Some(executed))
    }
}

/// How an append ended, when it did not succeed.
enum Appended {
    Conflict,
    Failed(StorageError),
}

/// One statement, one round trip: the events (with the same columns and
/// encoding postgres-es writes) and the stream's snapshot, as one implicit
/// transaction. The events' primary key is the optimistic lock; a snapshot
/// that is not at the expected version also fails the statement (division
/// by zero), so neither half can land without the other.
async fn append_postgres<A: Aggregate>(
    pool: &sqlx::PgPool,
    aggregate_id: &str,
    events: &[A::Event],
    context: &EventStoreAggregateContext<A>,
    next: &Warm<A>,
    metadata: &HashMap<String, String>,
) -> Result<(), Appended> {
    use cqrs_es::DomainEvent;
    let encode =
        |error: serde_json::Error| Appended::Failed(StorageError::EventStore(error.to_string()));
    let metadata = serde_json::to_value(metadata).map_err(encode)?;
    let mut sequences = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut versions = Vec::with_capacity(events.len());
    let mut payloads = Vec::with_capacity(events.len());
    for (offset, event) in events.iter().enumerate() {
        sequences.push((context.current_sequence + offset + 1) as i64);
        types.push(event.event_type());
        versions.push(event.event_version());
        payloads.push(serde_json::to_value(event).map_err(encode)?);
    }
    let metadatas = vec![metadata; events.len()];
    let snapshot = serde_json::to_value(&next.aggregate).map_err(encode)?;
    const EVENTS: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                             event_version, payload, metadata)
             SELECT $1, $2, e.sequence, e.event_type, e.event_version, e.payload, e.metadata
               FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
                    WITH ORDINALITY AS e(sequence, event_type, event_version, payload, metadata, n)
              ORDER BY e.n";
    let statement = match context.current_snapshot {
        None => format!(
            "WITH appended AS ({EVENTS}),
                  snapshot AS (INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence,
                                                      current_snapshot, payload)
                               VALUES ($1, $2, $8, $10, $9))
             SELECT 1"
        ),
        Some(_) => format!(
            "WITH appended AS ({EVENTS}),
                  snapshot AS (UPDATE snapshots
                                  SET last_sequence = $8, payload = $9, current_snapshot = $10
                                WHERE aggregate_type = $1 AND aggregate_id = $2
                                  AND current_snapshot = $11
                               RETURNING 1)
             SELECT 1 / (SELECT count(*)::int FROM snapshot)"
        ),
    };
    let query = sqlx::query(&statement)
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(sequences)
        .bind(types)
        .bind(versions)
        .bind(payloads)
        .bind(metadatas)
        .bind(next.sequence as i64)
        .bind(snapshot)
        .bind(next.snapshot.unwrap_or(1) as i64);
    let query = match context.current_snapshot {
        Some(previous) => query.bind(previous as i64),
        None => query,
    };
    match query.execute(pool).await {
        Ok(_) => Ok(()),
        Err(error) => {
            let code = error
                .as_database_error()
                .and_then(|error| error.code())
                .map(|code| code.to_string());
            match code.as_deref() {
                // A twin took the sequence or the key; the snapshot moved.
                Some("23505" | "22012") => Err(Appended::Conflict),
                _ => Err(Appended::Failed(error.into())),
            }
        }
    }
}

/// The SQLite append: the events and the stream's snapshot in one write
/// transaction, the snapshot's optimistic check made before the commit.
/// (sqlite-es checked it after committing, so a load that read the
/// snapshot before a concurrent commit and the events after it committed
/// its events and then reported a conflict: the command ran again and its
/// events were stored twice.) A taken sequence (primary key), a twin's
/// idempotency key (the key trigger) or a moved snapshot is a
/// [`Appended::Conflict`] with nothing written.
async fn append_sqlite<A: Aggregate>(
    writer: &sqlx::SqlitePool,
    aggregate_id: &str,
    events: &[A::Event],
    context: &EventStoreAggregateContext<A>,
    next: &Warm<A>,
    metadata: &HashMap<String, String>,
) -> Result<(), Appended> {
    use cqrs_es::DomainEvent;
    let encode =
        |error: serde_json::Error| Appended::Failed(StorageError::EventStore(error.to_string()));
    let failed = |error: sqlx::Error| {
        let conflict = error.as_database_error().is_some_and(|error| {
            match error.code().as_deref() {
                // The events' primary key, or a unique index.
                Some("1555" | "2067") => true,
                // A trigger's RAISE: only the idempotency-key trigger's is a conflict.
                Some("1811") => error.message().contains("idempotency key"),
                _ => false,
            }
        });
        match conflict {
            true => Appended::Conflict,
            false => Appended::Failed(error.into()),
        }
    };
    let metadata = serde_json::to_value(metadata).map_err(encode)?;
    let snapshot = serde_json::to_value(&next.aggregate).map_err(encode)?;
    let mut transaction = writer.begin().await.map_err(failed)?;
    for (offset, event) in events.iter().enumerate() {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind((context.current_sequence + offset + 1) as i64)
        .bind(event.event_type())
        .bind(event.event_version())
        .bind(serde_json::to_value(event).map_err(encode)?)
        .bind(&metadata)
        .execute(&mut *transaction)
        .await
        .map_err(failed)?;
    }
    let written = match context.current_snapshot {
        None => sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence,
                                    current_snapshot, payload)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(next.sequence as i64)
        .bind(next.snapshot.unwrap_or(1) as i64)
        .bind(&snapshot)
        .execute(&mut *transaction)
        .await
        .map_err(failed)?
        .rows_affected(),
        Some(previous) => sqlx::query(
            "UPDATE snapshots SET last_sequence = $3, payload = $4, current_snapshot = $5
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $6",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(next.sequence as i64)
        .bind(&snapshot)
        .bind(next.snapshot.unwrap_or(1) as i64)
        .bind(previous as i64)
        .execute(&mut *transaction)
        .await
        .map_err(failed)?
        .rows_affected(),
    };
    if written != 1 {
        // The snapshot moved: nothing of this attempt is kept.
        transaction.rollback().await.map_err(failed)?;
        return Err(Appended::Conflict);
    }
    transaction.commit().await.map_err(failed)?;
    Ok(())
}

/// An earlier answer from a `command_log` row, and that request's hash.
fn logged(row: &impl Portable) -> Result<(Executed, Option<String>), StorageError> {
    let sequence = row.int("last_sequence")?;
    // A command that changed nothing on an empty stream logs sequence 0.
    let position = match sequence {
        0 => None,
        sequence => Some(PositionToken::Stream {
            aggregate_type: row.text("aggregate_type")?,
            sequence,
            aggregate_id: row.text("aggregate_id")?,
        }),
    };
    Ok((
        Executed {
            position,
            replayed: true,
            response_id: row.opt_text("response_id")?,
        },
        row.opt_text("request_hash")?,
    ))
}

fn stream_token<A: Aggregate>(aggregate_id: &str, sequence: usize) -> PositionToken {
    PositionToken::Stream {
        aggregate_type: A::TYPE.to_string(),
        sequence: sequence as i64,
        aggregate_id: aggregate_id.to_string(),
    }
}

/// A feed position read from a row's `txid` (text) and `column` columns.
pub(crate) fn row_position(row: &impl Portable, column: &str) -> Result<Position, StorageError> {
    Ok(Position::new(
        parse_txid(&row.text("txid")?)?,
        row.int(column)?,
    ))
}

pub(crate) fn parse_txid(text: &str) -> Result<u64, StorageError> {
    text.parse()
        .map_err(|_| StorageError::Corrupt(format!("transaction id {text:?}")))
}

/// A little jitter so retrying writers do not collide in lockstep.
fn rand_byte() -> u8 {
    uuid::Uuid::new_v4().as_bytes()[0]
}

/// A stream's stored state, loaded to decide a command on it; its
/// [`Loaded::handle`] gives the write that [`commit_batch`] appends.
#[derive(Clone)]
pub struct Loaded<A: Aggregate> {
    aggregate_id: String,
    state: A,
    sequence: usize,
    snapshot: Option<usize>,
    /// Remembered from this executor's last commit rather than read.
    warm: bool,
}

impl<A> Loaded<A>
where
    A: Aggregate<Services = ()> + Clone,
{
    pub fn state(&self) -> &A {
        &self.state
    }

    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }

    /// Whether the state came from memory ([`CommandExecutor::load_many_warm`]):
    /// a write on it is confirmed by the commit's optimistic lock, but an
    /// answer without events is not confirmed by anything.
    pub fn is_warm(&self) -> bool {
        self.warm
    }

    /// Runs `command` on the loaded state: `None` when it changes nothing.
    pub async fn handle(
        &self,
        command: A::Command,
    ) -> Result<Option<StreamWrite>, CommandError<A::Error>> {
        self.handle_all(vec![command]).await
    }

    /// Runs `commands` one after the other on the loaded state (each sees
    /// what the ones before did): one write with all their events, `None`
    /// when none changed anything. A refused command refuses them all.
    pub async fn handle_all(
        &self,
        commands: Vec<A::Command>,
    ) -> Result<Option<StreamWrite>, CommandError<A::Error>> {
        Ok(self.decide(commands).await?.map(|(write, _)| write))
    }

    /// [`Loaded::handle_all`], also giving the stream as it stands once
    /// the write is committed (for [`CommandExecutor::remember`]).
    pub async fn decide(
        &self,
        commands: Vec<A::Command>,
    ) -> Result<Option<(StreamWrite, Loaded<A>)>, CommandError<A::Error>> {
        use cqrs_es::DomainEvent;
        let mut working = self.state.clone();
        let mut events = Vec::new();
        for command in commands {
            let sink: EventSink<A> = EventSink::default();
            working
                .handle(command, &(), &sink)
                .await
                .map_err(CommandError::Domain)?;
            events.extend(sink.collect().await);
        }
        if events.is_empty() {
            return Ok(None);
        }
        let encode = |error: serde_json::Error| StorageError::EventStore(error.to_string());
        let events = events
            .iter()
            .map(|event| {
                Ok((
                    event.event_type(),
                    event.event_version(),
                    serde_json::to_value(event).map_err(encode)?,
                ))
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        let last_sequence = self.sequence + events.len();
        // A new stream gets its snapshot at once; then one every
        // SNAPSHOT_EVERY events (loading replays the events after it).
        let due = self.snapshot.is_none()
            || self.sequence / SNAPSHOT_EVERY != last_sequence / SNAPSHOT_EVERY;
        let write = StreamWrite {
            aggregate_type: A::TYPE,
            aggregate_id: self.aggregate_id.clone(),
            first_sequence: self.sequence + 1,
            last_sequence,
            events,
            snapshot: if due {
                Some(serde_json::to_value(&working).map_err(encode)?)
            } else {
                None
            },
            expected_snapshot: self.snapshot,
        };
        let after = Loaded {
            aggregate_id: self.aggregate_id.clone(),
            state: working,
            sequence: write.last_sequence,
            snapshot: if due {
                Some(self.snapshot.map_or(1, |snapshot| snapshot + 1))
            } else {
                self.snapshot
            },
            warm: true,
        };
        Ok(Some((write, after)))
    }
}

/// One stream's share of a batch: its new events and snapshot.
#[derive(Debug, Clone)]
pub struct StreamWrite {
    aggregate_type: &'static str,
    aggregate_id: String,
    first_sequence: usize,
    last_sequence: usize,
    /// (type, version, payload) per event.
    events: Vec<(String, String, serde_json::Value)>,
    /// The stream's new snapshot, when one is due.
    snapshot: Option<serde_json::Value>,
    /// The snapshot version the write replaces (`None`: a new stream).
    expected_snapshot: Option<usize>,
}

/// Why a batch did not land.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A stream moved since it was loaded (another writer, another
    /// instance): nothing was written; load again and retry.
    #[error("a stream of the batch moved since it was loaded")]
    Conflict,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl<A> CommandExecutor<A>
where
    A: Aggregate<Services = ()> + Clone,
    A::Command: Clone,
{
    /// Loads many streams' stored state at once (from their snapshots:
    /// every append writes one), in the order of `aggregate_ids`.
    pub async fn load_many(
        &self,
        aggregate_ids: &[String],
    ) -> Result<Vec<Loaded<A>>, StorageError> {
        let mut found: HashMap<String, Loaded<A>> = HashMap::with_capacity(aggregate_ids.len());
        let rows = match &self.db {
            Db::Postgres(pool) => sqlx::query(
                "SELECT aggregate_id, last_sequence, current_snapshot, payload
                       FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = ANY($2)",
            )
            .bind(A::TYPE)
            .bind(aggregate_ids)
            .fetch_all(pool)
            .await?
            .iter()
            .map(snapshot_row)
            .collect::<Result<Vec<_>, StorageError>>()?,
            Db::Sqlite(sqlite) => {
                let ids = serde_json::to_string(aggregate_ids)
                    .map_err(|error| StorageError::EventStore(error.to_string()))?;
                sqlx::query(
                    "SELECT aggregate_id, last_sequence, current_snapshot, payload
                       FROM snapshots WHERE aggregate_type = $1
                        AND aggregate_id IN (SELECT value FROM json_each($2))",
                )
                .bind(A::TYPE)
                .bind(ids)
                .fetch_all(&sqlite.writer)
                .await?
                .iter()
                .map(snapshot_row)
                .collect::<Result<Vec<_>, StorageError>>()?
            }
        };
        for (aggregate_id, sequence, snapshot, payload) in rows {
            let state: A = serde_json::from_value(payload)
                .map_err(|error| StorageError::EventStore(error.to_string()))?;
            found.insert(
                aggregate_id.clone(),
                Loaded {
                    aggregate_id,
                    state,
                    sequence,
                    snapshot: Some(snapshot),
                    warm: false,
                },
            );
        }
        let mut loaded: Vec<Loaded<A>> = aggregate_ids
            .iter()
            .map(|id| {
                found.remove(id).unwrap_or_else(|| Loaded {
                    aggregate_id: id.clone(),
                    state: A::default(),
                    sequence: 0,
                    snapshot: None,
                    warm: false,
                })
            })
            .collect();
        self.replay_after_snapshots(&mut loaded).await?;
        Ok(loaded)
    }

    /// Applies to each stream the events stored after its snapshot (a
    /// batch writes a snapshot only every [`SNAPSHOT_EVERY`] events).
    async fn replay_after_snapshots(&self, loaded: &mut [Loaded<A>]) -> Result<(), StorageError> {
        if loaded.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = loaded
            .iter()
            .map(|stream| stream.aggregate_id.as_str())
            .collect();
        let after: Vec<i64> = loaded.iter().map(|stream| stream.sequence as i64).collect();
        let rows: Vec<(String, i64, serde_json::Value)> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT e.aggregate_id, e.sequence, e.payload
                       FROM UNNEST($2::text[], $3::bigint[]) AS s(id, after)
                       JOIN events e ON e.aggregate_type = $1 AND e.aggregate_id = s.id
                                    AND e.sequence > s.after
                      ORDER BY e.aggregate_id, e.sequence",
                )
                .bind(A::TYPE)
                .bind(&ids)
                .bind(&after)
                .fetch_all(pool)
                .await?
            }
            Db::Sqlite(sqlite) => {
                let pairs: Vec<(&str, i64)> =
                    ids.iter().copied().zip(after.iter().copied()).collect();
                let pairs = serde_json::to_string(&pairs)
                    .map_err(|error| StorageError::EventStore(error.to_string()))?;
                sqlx::query_as(
                    "SELECT e.aggregate_id, e.sequence, e.payload
                       FROM json_each($2) AS s
                      CROSS JOIN events e  -- SQLite: the pairs drive, each one key range
                      WHERE e.aggregate_type = $1
                        AND e.aggregate_id = json_extract(s.value, '$[0]')
                        AND e.sequence > json_extract(s.value, '$[1]')
                      ORDER BY e.aggregate_id, e.sequence",
                )
                .bind(A::TYPE)
                .bind(pairs)
                .fetch_all(&sqlite.writer)
                .await?
            }
        };
        if rows.is_empty() {
            return Ok(());
        }
        let index: HashMap<String, usize> = loaded
            .iter()
            .enumerate()
            .map(|(at, stream)| (stream.aggregate_id.clone(), at))
            .collect();
        for (aggregate_id, sequence, payload) in rows {
            let Some(stream) = index.get(&aggregate_id).map(|at| &mut loaded[*at]) else {
                continue;
            };
            let event: A::Event = serde_json::from_value(payload).map_err(|error| {
                StorageError::EventStore(format!("{aggregate_id} #{sequence}: {error}"))
            })?;
            stream.state.apply(event);
            stream.sequence = sequence as usize;
        }
        Ok(())
    }

    /// [`CommandExecutor::load_many`], taking the streams this executor
    /// committed last from memory (see `warm`) and reading only the rest.
    pub async fn load_many_warm(
        &self,
        aggregate_ids: &[String],
    ) -> Result<Vec<Loaded<A>>, StorageError> {
        let mut remembered: Vec<Option<Loaded<A>>> = match self.warm.lock() {
            Ok(warm) => aggregate_ids
                .iter()
                .map(|id| {
                    warm.get(id).map(|entry| Loaded {
                        aggregate_id: id.clone(),
                        state: entry.aggregate.clone(),
                        sequence: entry.sequence,
                        snapshot: entry.snapshot,
                        warm: true,
                    })
                })
                .collect(),
            Err(_) => aggregate_ids.iter().map(|_| None).collect(),
        };
        let cold: Vec<String> = aggregate_ids
            .iter()
            .zip(&remembered)
            .filter(|(_, warm)| warm.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        let mut loaded = if cold.is_empty() {
            Vec::new().into_iter()
        } else {
            self.load_many(&cold).await?.into_iter()
        };
        remembered
            .iter_mut()
            .map(|warm| {
                warm.take().or_else(|| loaded.next()).ok_or_else(|| {
                    StorageError::EventStore("load_many answered fewer streams".to_string())
                })
            })
            .collect()
    }

    /// Remembers streams as a committed batch left them (what
    /// [`Loaded::decide`] answered beside each write).
    pub fn remember(&self, written: impl IntoIterator<Item = Loaded<A>>) {
        for stream in written {
            self.keep_warm(
                &stream.aggregate_id,
                Some(Warm {
                    aggregate: stream.state,
                    sequence: stream.sequence,
                    snapshot: stream.snapshot,
                }),
            );
        }
    }

    /// Forgets what this executor remembers of streams a batch wrote.
    pub fn forget(&self, aggregate_ids: impl IntoIterator<Item = impl AsRef<str>>) {
        if let Ok(mut warm) = self.warm.lock() {
            for id in aggregate_ids {
                warm.remove(id.as_ref());
            }
        }
    }
}

fn snapshot_row<R>(row: &R) -> Result<(String, usize, usize, serde_json::Value), StorageError>
where
    R: sqlx::Row,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> serde_json::Value: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> &'r str: sqlx::ColumnIndex<R>,
{
    Ok((
        row.try_get("aggregate_id")?,
        row.try_get::<i64, _>("last_sequence")? as usize,
        row.try_get::<i64, _>("current_snapshot")? as usize,
        row.try_get("payload")?,
    ))
}

/// Appends every write of the batch, with the same metadata, in one
/// transaction: all of them or none. A stream that moved since it was
/// loaded fails the whole batch with [`BatchError::Conflict`].
pub async fn commit_batch(
    db: &Db,
    writes: &[StreamWrite],
    metadata: &EventMetadata,
) -> Result<(), BatchError> {
    if writes.is_empty() {
        return Ok(());
    }
    let metadata = serde_json::to_value(metadata.to_map())
        .map_err(|error| StorageError::EventStore(error.to_string()))?;
    let committed = match db {
        Db::Postgres(pool) => commit_batch_postgres(pool, writes, &metadata).await,
        Db::Sqlite(sqlite) => commit_batch_sqlite(&sqlite.writer, writes, &metadata).await,
    };
    match committed {
        Ok(true) => {
            db.notify_appended();
            Ok(())
        }
        Ok(false) => Err(BatchError::Conflict),
        Err(error) if is_unique_violation(&error) => Err(BatchError::Conflict),
        Err(error) => Err(BatchError::Storage(error.into())),
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code == "23505" || code == "2067" || code == "1555")
}

/// Three statements: every event, the new streams' snapshots, the moved
/// streams' snapshots that are due (only where still at the loaded
/// version). False when a snapshot had moved; a stream written without a
/// snapshot is guarded by the events' key (its next sequence).
async fn commit_batch_postgres(
    pool: &sqlx::PgPool,
    writes: &[StreamWrite],
    metadata: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let mut event_columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut event_rest = (Vec::new(), Vec::new());
    for write in writes {
        for (offset, (event_type, version, payload)) in write.events.iter().enumerate() {
            event_columns.0.push(write.aggregate_type);
            event_columns.1.push(write.aggregate_id.as_str());
            event_columns.2.push((write.first_sequence + offset) as i64);
            event_columns.3.push(event_type.as_str());
            event_rest.0.push(version.as_str());
            event_rest.1.push(payload);
        }
    }
    let mut transaction = pool.begin().await?;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT e.t, e.id, e.seq, e.event_type, e.version, e.payload, $7::jsonb
           FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                       $6::jsonb[])
                WITH ORDINALITY AS e(t, id, seq, event_type, version, payload, n)
          ORDER BY e.n",
    )
    .bind(&event_columns.0)
    .bind(&event_columns.1)
    .bind(&event_columns.2)
    .bind(&event_columns.3)
    .bind(&event_rest.0)
    .bind(&event_rest.1)
    .bind(metadata)
    .execute(&mut *transaction)
    .await?;
    let (new, moved): (Vec<&StreamWrite>, Vec<&StreamWrite>) = writes
        .iter()
        .filter(|write| write.snapshot.is_some())
        .partition(|write| write.expected_snapshot.is_none());
    if !new.is_empty() {
        sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot,
                                    payload)
             SELECT s.t, s.id, s.seq, 1, s.payload
               FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::jsonb[])
                    AS s(t, id, seq, payload)",
        )
        .bind(
            new.iter()
                .map(|write| write.aggregate_type)
                .collect::<Vec<_>>(),
        )
        .bind(
            new.iter()
                .map(|write| write.aggregate_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            new.iter()
                .map(|write| write.last_sequence as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            new.iter()
                .filter_map(|write| write.snapshot.as_ref())
                .collect::<Vec<_>>(),
        )
        .execute(&mut *transaction)
        .await?;
    }
    if !moved.is_empty() {
        let updated = sqlx::query(
            "UPDATE snapshots AS s
                SET last_sequence = u.seq, payload = u.payload, current_snapshot = u.expected + 1
               FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::jsonb[], $5::bigint[])
                    AS u(t, id, seq, payload, expected)
              WHERE s.aggregate_type = u.t AND s.aggregate_id = u.id
                AND s.current_snapshot = u.expected",
        )
        .bind(
            moved
                .iter()
                .map(|write| write.aggregate_type)
                .collect::<Vec<_>>(),
        )
        .bind(
            moved
                .iter()
                .map(|write| write.aggregate_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            moved
                .iter()
                .map(|write| write.last_sequence as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            moved
                .iter()
                .filter_map(|write| write.snapshot.as_ref())
                .collect::<Vec<_>>(),
        )
        .bind(
            moved
                .iter()
                .map(|write| write.expected_snapshot.unwrap_or_default() as i64)
                .collect::<Vec<_>>(),
        )
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        if updated != moved.len() as u64 {
            return Ok(false);
        }
    }
    transaction.commit().await?;
    Ok(true)
}

/// The same on SQLite's one writer: statements are local calls, so one per
/// row. False when a snapshot had moved.
async fn commit_batch_sqlite(
    writer: &sqlx::SqlitePool,
    writes: &[StreamWrite],
    metadata: &serde_json::Value,
) -> Result<bool, sqlx::Error> {
    let mut transaction = writer.begin().await?;
    for write in writes {
        for (offset, (event_type, version, payload)) in write.events.iter().enumerate() {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(write.aggregate_type)
            .bind(&write.aggregate_id)
            .bind((write.first_sequence + offset) as i64)
            .bind(event_type)
            .bind(version)
            .bind(payload)
            .bind(metadata)
            .execute(&mut *transaction)
            .await?;
        }
        let Some(snapshot) = &write.snapshot else {
            continue;
        };
        let written = match write.expected_snapshot {
            None => sqlx::query(
                "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence,
                                        current_snapshot, payload)
                 VALUES ($1, $2, $3, 1, $4)",
            )
            .bind(write.aggregate_type)
            .bind(&write.aggregate_id)
            .bind(write.last_sequence as i64)
            .bind(snapshot)
            .execute(&mut *transaction)
            .await?
            .rows_affected(),
            Some(expected) => sqlx::query(
                "UPDATE snapshots SET last_sequence = $3, payload = $4, current_snapshot = $5 + 1
                  WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $5",
            )
            .bind(write.aggregate_type)
            .bind(&write.aggregate_id)
            .bind(write.last_sequence as i64)
            .bind(snapshot)
            .bind(expected as i64)
            .execute(&mut *transaction)
            .await?
            .rows_affected(),
        };
        if written != 1 {
            return Ok(false);
        }
    }
    transaction.commit().await?;
    Ok(true)
}
