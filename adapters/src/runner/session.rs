//! Leadership (one active instance per consumer) and wake-ups.

use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Sqlite, SqlitePool};
use tokio::sync::watch;

use super::{Consumer, Projection, checkpoint};
use crate::StorageError;
use crate::db::{AsConn, Backend, Conn, Db};

/// The channel the events table notifies on append.
pub const EVENTS_CHANNEL: &str = "karvon_events";
/// The channel `projection_checkpoints` notifies when a checkpoint moves.
pub const CHECKPOINTS_CHANNEL: &str = "karvon_checkpoints";

/// Wakes feed consumers after appends, and read-your-writes waiters after
/// checkpoint moves: on PostgreSQL one LISTEN connection per process (both
/// channels), on SQLite this process's own writes. Cheap to clone; every
/// clone sees every wake-up.
#[derive(Clone)]
pub struct Wakeup {
    appends: watch::Receiver<u64>,
    checkpoints: watch::Receiver<u64>,
}

impl Wakeup {
    /// Starts listening (PostgreSQL: a task that holds the LISTEN
    /// connection, reconnecting after errors, until `shutdown`).
    pub fn start(db: &Db, shutdown: watch::Receiver<bool>) -> Self {
        if let Some((appends, checkpoints)) = db.local_wakeups() {
            return Self {
                appends,
                checkpoints,
            };
        }
        let (appended, appends) = watch::channel(0u64);
        let (moved, checkpoints) = watch::channel(0u64);
        if let Db::Postgres(pool) = db {
            tokio::spawn(listen(pool.clone(), appended, moved, shutdown));
        }
        Self {
            appends,
            checkpoints,
        }
    }

    /// Resolves after the next append (at once if one happened since the
    /// last call), or after `poll` at the latest.
    pub async fn appended(&mut self, poll: Duration) {
        changed_or(&mut self.appends, poll).await;
    }

    /// Forgets the checkpoint moves seen so far: a following
    /// [`Wakeup::checkpoint_moved`] waits for a newer one.
    pub fn mark_checkpoints_seen(&mut self) {
        self.checkpoints.borrow_and_update();
    }

    /// Resolves after the next checkpoint move (at once if one happened
    /// since the last call), or after `poll` at the latest.
    pub async fn checkpoint_moved(&mut self, poll: Duration) {
        changed_or(&mut self.checkpoints, poll).await;
    }
}

async fn changed_or(receiver: &mut watch::Receiver<u64>, poll: Duration) {
    tokio::select! {
        changed = receiver.changed() => {
            if changed.is_err() {
                // The listener is gone (shutting down): poll.
                tokio::time::sleep(poll).await;
            }
        }
        _ = tokio::time::sleep(poll) => {}
    }
}

async fn listen(
    pool: PgPool,
    appended: watch::Sender<u64>,
    moved: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let bump = |sender: &watch::Sender<u64>| sender.send_modify(|n| *n = n.wrapping_add(1));
    while !*shutdown.borrow() {
        let listener = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener
                .listen_all([EVENTS_CHANNEL, CHECKPOINTS_CHANNEL])
                .await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listener.await {
            Ok(listener) => listener,
            Err(_) if pool.is_closed() => return,
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for appends; consumers poll meanwhile");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        // Whatever happened while (re)connecting is not missed.
        bump(&appended);
        bump(&moved);
        loop {
            tokio::select! {
                notification = listener.recv() => match notification {
                    Ok(notification) if notification.channel() == CHECKPOINTS_CHANNEL => bump(&moved),
                    Ok(_) => bump(&appended),
                    Err(_) if pool.is_closed() => return,
                    Err(error) => {
                        tracing::warn!(%error, "LISTEN connection lost; reconnecting");
                        break;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// An active runner's hold on its backend.
pub(crate) enum Session {
    /// A dedicated connection holding the advisory lock.
    Postgres { conn: PgConnection },
    /// The writer pool (steps take its one connection).
    Sqlite { writer: SqlitePool },
}

impl Session {
    /// Waits for leadership; `None` when shut down first.
    pub(crate) async fn lead(
        db: &Db,
        name: &str,
        settings: &super::RunnerSettings,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Option<Self>, StorageError> {
        match db {
            Db::Postgres(pool) => {
                let application_name = format!("karvon-runner:{name}:{}", settings.instance);
                let mut conn = connect(pool, &application_name).await?;
                while !try_lock(&mut conn, name).await? {
                    tokio::select! {
                        _ = tokio::time::sleep(settings.standby_interval) => {}
                        _ = shutdown.changed() => return Ok(None),
                    }
                    if *shutdown.borrow() {
                        return Ok(None);
                    }
                }
                Ok(Some(Session::Postgres { conn }))
            }
            Db::Sqlite(sqlite) => Ok(Some(Session::Sqlite {
                writer: sqlite.writer.clone(),
            })),
        }
    }

    /// The session's connection (SQLite: the writer, taken until the
    /// returned handle is dropped).
    pub(crate) async fn acquire(&mut self) -> Result<SessionConn<'_>, StorageError> {
        Ok(match self {
            Session::Postgres { conn } => SessionConn::Postgres(conn),
            Session::Sqlite { writer } => SessionConn::Sqlite(writer.acquire().await?),
        })
    }

    pub(crate) async fn prepare(&mut self, consumer: &Consumer) -> Result<(), StorageError> {
        prepare(&mut self.acquire().await?.conn(), consumer).await
    }
}

/// A session's connection in hand.
pub(crate) enum SessionConn<'s> {
    Postgres(&'s mut PgConnection),
    Sqlite(PoolConnection<Sqlite>),
}

impl SessionConn<'_> {
    pub(crate) fn conn(&mut self) -> Conn<'_> {
        match self {
            SessionConn::Postgres(conn) => Conn::Postgres(conn),
            SessionConn::Sqlite(conn) => Conn::Sqlite(conn),
        }
    }
}

/// Opens a dedicated connection (not from the pool: it holds the lock).
pub(crate) async fn connect(
    pool: &PgPool,
    application_name: &str,
) -> Result<PgConnection, StorageError> {
    let options: PgConnectOptions = (*pool.connect_options())
        .clone()
        .application_name(application_name);
    Ok(options.connect().await?)
}

pub(crate) async fn try_lock(conn: &mut PgConnection, name: &str) -> Result<bool, StorageError> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(format!("karvon.feed.{name}"))
        .fetch_one(conn)
        .await?;
    Ok(locked)
}

/// Creates every consumer's checkpoint row and each projection's live
/// tables when missing; the application does this before it serves.
pub async fn prepare_all(db: &Db, consumers: &[Consumer]) -> Result<(), StorageError> {
    for consumer in consumers {
        match db {
            Db::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                prepare(&mut Conn::Postgres(&mut conn), consumer).await?;
            }
            Db::Sqlite(sqlite) => {
                let mut conn = sqlite.writer.acquire().await?;
                prepare(&mut Conn::Sqlite(&mut conn), consumer).await?;
            }
        }
    }
    Ok(())
}

pub(crate) async fn prepare(conn: &mut Conn<'_>, consumer: &Consumer) -> Result<(), StorageError> {
    checkpoint::ensure(conn, consumer.name()).await?;
    match consumer.projection() {
        Some(projection) => create_schema(conn, projection.as_ref(), projection.name()).await,
        None => Ok(()),
    }
}

/// Creates `schema` (PostgreSQL) and the projection's tables in it, in one
/// write transaction.
pub(crate) async fn create_schema(
    conn: &mut Conn<'_>,
    projection: &dyn Projection,
    schema: &str,
) -> Result<(), StorageError> {
    crate::db::on_conn!(conn, c => {
        let mut tx = c.begin_with(begin_write(&**c)).await?;
        let mut tx_conn = tx.as_conn();
        if tx_conn.backend() == Backend::Postgres {
            // Concurrent CREATE … IF NOT EXISTS can still collide in the
            // catalogue; instances starting together take turns.
            tx_conn
                .execute("SELECT pg_advisory_xact_lock(hashtextextended('karvon.prepare', 0))")
                .await?;
            tx_conn
                .execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                .await?;
        }
        projection.create_tables(&mut tx_conn, schema).await?;
        tx.commit().await?;
    });
    Ok(())
}

/// The statement that opens a write transaction on `conn`'s backend.
pub(crate) fn begin_write<C: AsConn>(_conn: &C) -> &'static str {
    C::BEGIN_WRITE
}
