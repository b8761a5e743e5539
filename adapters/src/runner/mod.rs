//! The feed runner: the one place events leave the store for read models,
//! reactions and publishing.
//!
//! Every feed consumer has a checkpoint row in `projection_checkpoints` and
//! is one of three kinds ([`Consumer`]), each with one code path on both
//! backends:
//! - a [`Projection`] applies a batch to its tables and moves its
//!   checkpoint in the same transaction; it can be rebuilt;
//! - a [`Reactor`] turns events into keyed commands, which the runner runs
//!   with no feed transaction open, then moves the checkpoint;
//! - a [`Publisher`] sends a batch, waits for the acknowledgement, then
//!   moves the checkpoint.
//!
//! Only one instance runs a consumer at a time: on PostgreSQL the runner
//! holds a session advisory lock on a connection of its own (a projection's
//! steps run on that connection, so losing it loses the lock and rolls back
//! the step in hand); on SQLite one process owns the file. One [`Wakeup`]
//! per process wakes every consumer after an append.
//!
//! An event a consumer cannot consume (it does not decode, its command is
//! refused, the consumer panics on it) stops that consumer alone in state
//! `failed`; see [`Runner`] and [`checkpoint`].
//!
//! Concerns: [`checkpoint`] (the checkpoint row, failures, skips),
//! [`session`] (leadership and wake-ups), [`step`] (one step per kind),
//! [`rebuild`], [`status`] (where consumers stand, read-your-writes waits).

pub mod checkpoint;
pub mod rebuild;
pub mod session;
pub mod status;
pub mod step;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::StorageError;
use crate::db::{Conn, Db};
use crate::feed::{FeedEvent, Wanted};
use crate::reactions::{Commands, Reaction};

pub use checkpoint::{SkipOutcome, SkippedEvent};
pub use rebuild::{RebuildReport, rebuild};
pub use session::{EVENTS_CHANNEL, Wakeup};
pub use status::{ConsumerStatus, reached, status, tenant_at, wait_until_applied};
pub use step::StepMemory;

/// A read model: tables of its own, fed in batches inside the step's
/// transaction. Its name is also its schema (PostgreSQL) or table-name
/// prefix (SQLite).
#[async_trait::async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The checkpoint name; also the read model's name in the CLI and API.
    fn name(&self) -> &'static str;

    /// The read model's tables (unqualified), for backends that swap a
    /// rebuild table by table.
    fn tables(&self) -> &'static [&'static str];

    /// The aggregate types whose events it folds (`None`: every event).
    /// Only those reach [`Projection::apply`]; the checkpoint still moves
    /// over the others.
    fn aggregate_types(&self) -> Wanted;

    /// Creates the read model's tables in `schema` when missing; name them
    /// with [`crate::db::Backend::table`] and [`crate::db::Backend::index`].
    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError>;

    /// Forgets any state cached between steps. The runner calls it whenever
    /// the stored checkpoint is not the one it last committed (a failed
    /// step, a restart, a rebuild that swapped the tables, a skip).
    fn reset(&self) {}

    /// Applies a batch inside the step's transaction, to the tables of
    /// `schema` (the live one or a rebuild's). State cached in memory is
    /// only valid once the step commits; the runner resets it otherwise.
    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError>;
}

/// A process manager: decides which commands an event calls for. Deciding
/// is pure; the runner runs the commands.
pub trait Reactor: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// The aggregate types whose events it reacts to (`None`: every
    /// event). Only those reach [`Reactor::react`].
    fn aggregate_types(&self) -> Wanted;

    /// The commands `event` calls for (none for events it ignores). An
    /// error here is a failure of that event.
    fn react(&self, event: &FeedEvent) -> Result<Vec<Reaction>, StorageError>;
}

/// Sends events elsewhere (NATS, outgoing webhooks); the receiver
/// de-duplicates, so sending a batch again after a crash is harmless.
#[async_trait::async_trait]
pub trait Publisher: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Sends the batch and returns once every event is acknowledged.
    /// [`StorageError::Unavailable`] is retried; a poison error
    /// ([`StorageError::is_poison`]) stops the publisher on the event.
    async fn publish(&self, events: &[FeedEvent]) -> Result<(), StorageError>;
}

/// A feed consumer of one of the three kinds.
#[derive(Clone)]
pub enum Consumer {
    Projection(Arc<dyn Projection>),
    Reactor(Arc<dyn Reactor>),
    Publisher(Arc<dyn Publisher>),
}

/// The kind of a [`Consumer`], as the admin API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Projection,
    Reactor,
    Publisher,
}

impl Consumer {
    pub fn name(&self) -> &'static str {
        match self {
            Consumer::Projection(projection) => projection.name(),
            Consumer::Reactor(reactor) => reactor.name(),
            Consumer::Publisher(publisher) => publisher.name(),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Consumer::Projection(_) => Kind::Projection,
            Consumer::Reactor(_) => Kind::Reactor,
            Consumer::Publisher(_) => Kind::Publisher,
        }
    }

    /// The aggregate types the consumer reads (publishers: every event).
    pub fn aggregate_types(&self) -> Wanted {
        match self {
            Consumer::Projection(projection) => projection.aggregate_types(),
            Consumer::Reactor(reactor) => reactor.aggregate_types(),
            Consumer::Publisher(_) => None,
        }
    }

    /// The projection, for the operations only read models have (rebuild).
    pub fn projection(&self) -> Option<&Arc<dyn Projection>> {
        match self {
            Consumer::Projection(projection) => Some(projection),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub batch_size: i64,
    /// Fallback wake-up when no notification arrives (e.g. a long open
    /// transaction held the horizon back).
    pub poll_interval: Duration,
    /// How often a standby retries the leadership lock.
    pub standby_interval: Duration,
    /// Least time between the starts of two small steps: bounds the step
    /// rate (and so its per-transaction overhead) under steady appends, at
    /// the cost of that much read-your-writes latency under load.
    pub min_step_interval: Duration,
    /// Pause after an error before reconnecting.
    pub retry_backoff: Duration,
    /// First wait before a failed consumer tries its event again by itself;
    /// doubles with each failure in a row, up to [`Self::failure_backoff_max`].
    pub failure_backoff: Duration,
    pub failure_backoff_max: Duration,
    /// Names this instance in `pg_stat_activity` (`karvon-runner:<name>:<instance>`).
    pub instance: String,
    /// Fault injection for crash tests: a pause between applying a batch and
    /// writing its checkpoint (inside a projection's transaction; after a
    /// reactor's commands). Zero in production.
    pub pause_before_checkpoint: Duration,
    /// Fault injection for tests: the first this-many reactions answer
    /// `Contended` before they run. Zero in production.
    pub contend_first_reactions: u32,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            poll_interval: Duration::from_millis(250),
            standby_interval: Duration::from_millis(500),
            min_step_interval: Duration::from_millis(20),
            retry_backoff: Duration::from_secs(1),
            failure_backoff: Duration::from_secs(30),
            failure_backoff_max: Duration::from_secs(30 * 60),
            instance: std::process::id().to_string(),
            pause_before_checkpoint: Duration::ZERO,
            contend_first_reactions: 0,
        }
    }
}

impl RunnerSettings {
    /// How long a consumer that failed `failures` times in a row waits
    /// before it tries again by itself.
    pub fn failure_delay(&self, failures: i64) -> Duration {
        let doublings = u32::try_from(failures.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        self.failure_backoff
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.failure_backoff_max)
    }
}

/// Runs one consumer: waits for leadership, then steps whenever events
/// arrive, until shut down.
pub struct Runner {
    db: Db,
    consumer: Consumer,
    settings: RunnerSettings,
    wakeup: Option<Wakeup>,
    commands: Commands,
    /// Reactions answered `Contended` by fault injection so far.
    contended: std::sync::atomic::AtomicU32,
}

impl Runner {
    pub fn new(db: Db, consumer: Consumer, settings: RunnerSettings) -> Self {
        let commands = Commands::new(&db);
        Self {
            db,
            consumer,
            settings,
            wakeup: None,
            commands,
            contended: Default::default(),
        }
    }

    /// Shares the process's wake-up (otherwise the runner starts its own).
    pub fn with_wakeup(mut self, wakeup: Wakeup) -> Self {
        self.wakeup = Some(wakeup);
        self
    }

    /// Runs until `shutdown` turns true; a step in hand is finished first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = self.consumer.name();
        let wakeup = match &self.wakeup {
            Some(wakeup) => wakeup.clone(),
            None => Wakeup::start(&self.db, shutdown.clone()),
        };
        while !*shutdown.borrow() {
            match self.lead(wakeup.clone(), &mut shutdown).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(consumer = name, %error, "feed consumer failed; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(self.settings.retry_backoff) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
        tracing::info!(consumer = name, "feed consumer stopped");
    }

    async fn lead(
        &self,
        mut wakeup: Wakeup,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), StorageError> {
        let name = self.consumer.name();
        let Some(mut session) =
            session::Session::lead(&self.db, name, &self.settings, shutdown).await?
        else {
            return Ok(());
        };
        tracing::info!(consumer = name, kind = ?self.consumer.kind(), "feed consumer is active");
        session.prepare(&self.consumer).await?;
        let mut memory = StepMemory::default();
        let mut failed = checkpoint::failure(&self.db, name).await?;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            if let Some(failure) = &failed {
                // Stopped on an event: wait for an operator's retry or skip,
                // or for the back-off to pass, then try again.
                if !self.wait_out(failure, &mut wakeup, shutdown).await? {
                    return Ok(());
                }
            }
            let started = Instant::now();
            let outcome =
                step::guarded(self, &mut session, self.settings.batch_size, &mut memory).await;
            let applied = match outcome {
                Ok(applied) => applied,
                Err(error) if error.is_poison() => {
                    failed = self.isolate(&mut session, &mut memory, error).await?;
                    continue;
                }
                Err(error) => return Err(error),
            };
            if applied > 0 {
                self.db.notify_checkpoint();
            }
            if failed.take().is_some() {
                checkpoint::clear_failure(&self.db, name).await?;
                tracing::info!(consumer = name, "feed consumer recovered");
            }
            if applied as i64 >= self.settings.batch_size {
                continue;
            }
            tokio::select! {
                () = wakeup.appended(self.settings.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
            // Under a stream of appends, wake at most once per interval so a
            // step carries many events instead of one; when quiet, the
            // notification is served at once.
            let since = started.elapsed();
            if since < self.settings.min_step_interval {
                tokio::time::sleep(self.settings.min_step_interval - since).await;
            }
        }
    }

    /// After a batch failed with a poison error: steps one event at a time
    /// up to the event that fails, and records the failure on it.
    async fn isolate(
        &self,
        session: &mut session::Session,
        memory: &mut StepMemory,
        first_error: StorageError,
    ) -> Result<Option<checkpoint::Failure>, StorageError> {
        let name = self.consumer.name();
        tracing::warn!(consumer = name, error = %first_error, "batch failed; finding the event");
        loop {
            let outcome = step::guarded(self, session, 1, memory).await;
            match outcome {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    self.db.notify_checkpoint();
                    continue;
                }
                Err(error) if error.is_poison() => {
                    let failure = checkpoint::record_failure(
                        &self.db,
                        name,
                        self.consumer.aggregate_types(),
                        &error,
                    )
                    .await?;
                    tracing::error!(
                        consumer = name,
                        event_id = ?failure.event_id,
                        %error,
                        "feed consumer stopped on an event it cannot consume; \
                         retry or skip it (POST /api/v1/admin/projections/{name}/retry|skip)"
                    );
                    return Ok(Some(failure));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Waits while the consumer is failed. Returns `false` on shutdown,
    /// `true` when it should try again (the operator cleared the failure,
    /// or its back-off passed).
    async fn wait_out(
        &self,
        failure: &checkpoint::Failure,
        wakeup: &mut Wakeup,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, StorageError> {
        let delay = self.settings.failure_delay(failure.failures);
        let retry_at =
            failure.failed_at + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        loop {
            if *shutdown.borrow() {
                return Ok(false);
            }
            match checkpoint::failure(&self.db, self.consumer.name()).await? {
                None => return Ok(true),
                Some(current) if current.failures != failure.failures => return Ok(true),
                Some(_) => {}
            }
            let now = chrono::Utc::now();
            if now >= retry_at {
                return Ok(true);
            }
            let left = (retry_at - now).to_std().unwrap_or_default();
            let nap = left.min(self.settings.poll_interval * 4);
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                () = wakeup.appended(nap) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}
