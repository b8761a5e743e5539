//! One step of a consumer, one code path per kind on both backends.
//!
//! - Projection: one write transaction on the session's connection: lock
//!   the checkpoint, read the batch, apply, move the checkpoint, commit.
//! - Reactor: read the checkpoint and the batch (no transaction held), run
//!   each event's commands keyed by (reactor, event id), then move the
//!   checkpoint if it is still where the step found it.
//! - Publisher: read, publish and await every acknowledgement, then move
//!   the checkpoint the same way.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::FutureExt;
use karvon_projections::Position;
use sqlx::Connection;

use super::session::{Session, begin_write};
use super::{Consumer, Projection, Publisher, Reactor, Runner, RunnerSettings, checkpoint};
use crate::StorageError;
use crate::db::{AsConn, Conn, Db, on_conn, on_pool};
use crate::feed::{self, FeedBatch, FeedEvent, Wanted};
use crate::reactions::{Commands, ReactionError};

/// What a runner remembers between steps: the checkpoint it last
/// committed. A projection's cache is trusted only while the stored
/// checkpoint is still that one.
#[derive(Debug, Default)]
pub struct StepMemory {
    /// Checkpoint position and generation of the last committed step.
    pub(crate) last_committed: Option<(Position, i64)>,
}

/// One step of up to `limit` events, with a panic inside the consumer
/// caught and turned into [`StorageError::Panicked`].
pub(crate) async fn guarded(
    runner: &Runner,
    session: &mut Session,
    limit: i64,
    memory: &mut StepMemory,
) -> Result<usize, StorageError> {
    let Runner {
        db,
        consumer,
        settings,
        commands,
        contended,
        ..
    } = runner;
    let step = async {
        match consumer {
            Consumer::Projection(projection) => {
                let mut conn = session.acquire().await?;
                step(
                    &mut conn.conn(),
                    projection.as_ref(),
                    projection.name(),
                    projection.name(),
                    settings,
                    limit,
                    memory,
                )
                .await
            }
            Consumer::Reactor(reactor) => {
                react(db, reactor.as_ref(), commands, settings, limit, contended).await
            }
            Consumer::Publisher(publisher) => {
                publish(db, publisher.as_ref(), settings, limit).await
            }
        }
    };
    match AssertUnwindSafe(step).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(panic) => {
            if let Consumer::Projection(projection) = consumer {
                projection.reset();
            }
            memory.last_committed = None;
            Err(panicked(panic))
        }
    }
}

/// A caught panic as an error, with its message.
fn panicked(panic: Box<dyn std::any::Any + Send>) -> StorageError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|text| text.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string());
    StorageError::Panicked(message)
}

/// One projection step in its own transaction; returns how many events it
/// applied.
pub(crate) async fn step(
    conn: &mut Conn<'_>,
    projection: &dyn Projection,
    checkpoint: &str,
    schema: &str,
    settings: &RunnerSettings,
    limit: i64,
    memory: &mut StepMemory,
) -> Result<usize, StorageError> {
    let outcome = on_conn!(conn, c => {
        async {
            let mut tx = c.begin_with(begin_write(&**c)).await?;
            let stepped = AssertUnwindSafe(step_within(
                &mut tx.as_conn(),
                projection,
                checkpoint,
                schema,
                settings,
                limit,
                memory,
            ))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Err(panicked(panic)));
            // Roll back at once: a dropped transaction would keep its locks
            // (the checkpoint row) until the connection is next used.
            match stepped {
                Ok(stepped) => {
                    tx.commit().await?;
                    Ok(stepped)
                }
                Err(error) => {
                    tx.rollback().await?;
                    Err(error)
                }
            }
        }
        .await
    });
    match outcome {
        Ok(((_, progress), position)) => {
            memory.last_committed = Some(position);
            Ok(progress)
        }
        Err(error) => {
            memory.last_committed = None;
            projection.reset();
            Err(error)
        }
    }
}

/// One projection step inside a transaction the caller owns: the events
/// it read and its [`feed::FeedBatch::progress`], and where it left the
/// checkpoint.
pub(crate) async fn step_within(
    tx: &mut Conn<'_>,
    projection: &dyn Projection,
    checkpoint: &str,
    schema: &str,
    settings: &RunnerSettings,
    limit: i64,
    memory: &StepMemory,
) -> Result<((usize, usize), (Position, i64)), StorageError> {
    let (after, generation) = checkpoint::read_locked(tx, checkpoint).await?;
    if memory.last_committed != Some((after, generation)) {
        projection.reset();
    }
    let batch = feed::read_batch(tx, after, limit, projection.aggregate_types()).await?;
    let Some(last) = batch.last else {
        return Ok(((0, 0), (after, generation)));
    };
    if !batch.events.is_empty() {
        projection.apply(tx, schema, &batch.events).await?;
    }
    if !settings.pause_before_checkpoint.is_zero() {
        tokio::time::sleep(settings.pause_before_checkpoint).await;
    }
    checkpoint::write(tx, checkpoint, last, batch.read).await?;
    count(projection.name(), batch.read);
    Ok(((batch.read, batch.progress()), (last, generation)))
}

fn count(consumer: &'static str, events: usize) {
    metrics::counter!("karvon_projection_events_total", "projection" => consumer)
        .increment(events as u64);
}

/// The checkpoint and the batch after it, read without holding a
/// transaction (SQLite: from a reader, so the writer stays free for the
/// consumer's own commands).
async fn read_unlocked(
    db: &Db,
    name: &str,
    limit: i64,
    wanted: Wanted,
) -> Result<(Position, FeedBatch), StorageError> {
    on_pool!(db, read, pool => {
        let mut conn = pool.acquire().await?;
        let mut conn = conn.as_conn();
        let (after, _) = checkpoint::read(&mut conn, name).await?;
        let batch = feed::read_batch(&mut conn, after, limit, wanted).await?;
        Ok((after, batch))
    })
}

/// A reactor step: each event's commands in feed order, then the
/// checkpoint. On a failing event the checkpoint moves up to the event
/// before it, and the error is returned.
async fn react(
    db: &Db,
    reactor: &dyn Reactor,
    commands: &Commands,
    settings: &RunnerSettings,
    limit: i64,
    contended: &AtomicU32,
) -> Result<usize, StorageError> {
    let name = reactor.name();
    let (after, batch) = read_unlocked(db, name, limit, reactor.aggregate_types()).await?;
    let events = &batch.events;
    for (done, event) in events.iter().enumerate() {
        if let Err(error) = react_to(reactor, commands, settings, event, contended).await {
            if done > 0 {
                checkpoint::advance(db, name, after, events[done - 1].position, done).await?;
                count(name, done);
            }
            return Err(error);
        }
    }
    let Some(last) = batch.last else {
        return Ok(0);
    };
    if !settings.pause_before_checkpoint.is_zero() {
        tokio::time::sleep(settings.pause_before_checkpoint).await;
    }
    if checkpoint::advance(db, name, after, last, batch.read).await? {
        count(name, batch.read);
    }
    Ok(batch.progress())
}

/// Runs the commands one event calls for. `Contended` is retried with
/// back-off; after a while it is returned as a transient error, and the
/// step runs again later (the keys make that safe).
async fn react_to(
    reactor: &dyn Reactor,
    commands: &Commands,
    settings: &RunnerSettings,
    event: &FeedEvent,
    contended: &AtomicU32,
) -> Result<(), StorageError> {
    let name = reactor.name();
    let reactions = reactor.react(event)?;
    let many = reactions.len() > 1;
    for (index, reaction) in reactions.into_iter().enumerate() {
        let key = if many {
            format!("{name}:{}:{index}", event.event_id)
        } else {
            format!("{name}:{}", event.event_id)
        };
        let mut attempt = 0u32;
        loop {
            let outcome = if inject_contention(settings, contended) {
                Err(ReactionError::Contended)
            } else {
                commands.run(reaction.clone(), key.clone()).await
            };
            match outcome {
                Ok(()) => break,
                Err(ReactionError::Failed(error)) => return Err(error),
                Err(ReactionError::Contended) if attempt < 12 => {
                    attempt += 1;
                    metrics::counter!("karvon_reaction_retries_total", "reactor" => name)
                        .increment(1);
                    let pause = Duration::from_millis(20u64 << attempt.min(7));
                    tracing::debug!(reactor = name, event_id = %event.event_id, attempt, "contended; retrying");
                    tokio::time::sleep(pause).await;
                }
                Err(ReactionError::Contended) => {
                    return Err(StorageError::EventStore(format!(
                        "{name}: the stream stayed contended for event {}",
                        event.event_id
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Fault injection: the runner's first `contend_first_reactions`
/// reactions answer `Contended` (`injected` counts them).
fn inject_contention(settings: &RunnerSettings, injected: &AtomicU32) -> bool {
    settings.contend_first_reactions > 0
        && injected
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |done| {
                (done < settings.contend_first_reactions).then_some(done + 1)
            })
            .is_ok()
}

/// A publisher step: send the batch, await the acknowledgements, then move
/// the checkpoint.
async fn publish(
    db: &Db,
    publisher: &dyn Publisher,
    settings: &RunnerSettings,
    limit: i64,
) -> Result<usize, StorageError> {
    let name = publisher.name();
    let (after, batch) = read_unlocked(db, name, limit, None).await?;
    let Some(last) = batch.last else {
        return Ok(0);
    };
    publisher.publish(&batch.events).await?;
    if !settings.pause_before_checkpoint.is_zero() {
        tokio::time::sleep(settings.pause_before_checkpoint).await;
    }
    if checkpoint::advance(db, name, after, last, batch.read).await? {
        count(name, batch.read);
    }
    Ok(batch.progress())
}
