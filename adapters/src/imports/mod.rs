//! Import jobs (SPEC §3 "Integrations", 1C): starting one, the worker that
//! runs them, and how 1C records become products and customers.
//!
//! A job reads its whole source (a SOAP call, OData pages, an uploaded
//! CommerceML pair), then writes it chunk by chunk. Each chunk is one
//! batch: the records' events and the job's `ImportChunkProcessed` commit
//! together or not at all, so a job resumes after its last committed
//! chunk (re-reading the source) and never counts a chunk twice. Records
//! whose content is what Karvon already holds append nothing.

pub mod queue;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use karvon_domain::customer::{Customer, CustomerCommand, CustomerDetails};
use karvon_domain::ids::{customer_stream_id, import_job_stream_id, product_stream_id};
use karvon_domain::import_job::{
    ChunkOutcome, ImportJob, ImportJobCommand, ImportJobError, ImportKind, ImportSource, Rejection,
};
use karvon_domain::product::{Product, ProductCommand, ProductDetails, ProductStatus};
use karvon_domain::{Id, Money};
use karvon_projections::{EventMetadata, PositionToken};
use serde_json::{Map, Value};
use tokio::sync::{Notify, Semaphore, watch};
use uuid::Uuid;

use crate::StorageError;
use crate::db::Db;
use crate::integrations::{self, SecretsKey};
use crate::onec::{self, ClientRecord, Parsed, ProductRecord, SourceError, Transport};
use crate::store::{BatchError, CommandError, CommandExecutor, StreamWrite, commit_batch};
pub use queue::Queued;

/// The category of a product 1C files under no folder.
pub const NO_CATEGORY: &str = "uncategorized";
/// The unit of a product 1C sends without one.
pub const DEFAULT_UNIT: &str = "шт";
/// The system name of 1C references in `external_refs`.
pub const ONE_C: &str = "1c";

/// Jobs one instance runs at once.
const PARALLEL_JOBS: usize = 2;
/// How often the worker looks for queued jobs another instance added.
const POLL: Duration = Duration::from_secs(1);

/// Why a job could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the job could not be recorded: {0}")]
    Refused(String),
}

/// What a start answered.
#[derive(Debug, Clone)]
pub struct Started {
    pub job_id: String,
    /// True when the integration already had a job of this kind running:
    /// `job_id` is that job.
    pub already_running: bool,
    /// The job's start event (for read-your-writes waits).
    pub position: Option<PositionToken>,
}

/// Starts and runs import jobs.
pub struct Imports {
    db: Db,
    products: Arc<CommandExecutor<Product>>,
    customers: Arc<CommandExecutor<Customer>>,
    jobs: Arc<CommandExecutor<ImportJob>>,
    secrets: Option<SecretsKey>,
    transport: Transport,
    wake: Notify,
    /// Jobs this instance runs now.
    running: Mutex<HashSet<String>>,
}

/// Everything a job needs to read its source.
struct Source {
    settings: Map<String, Value>,
    secrets: Map<String, Value>,
}

/// A source read whole.
enum Fetched {
    Products {
        /// Folder GUID → name (the category of products under it).
        folders: HashMap<String, String>,
        records: Vec<Parsed<ProductRecord>>,
        chunk_size: usize,
    },
    Clients {
        records: Vec<Parsed<ClientRecord>>,
        chunk_size: usize,
    },
}

impl Imports {
    pub fn new(
        db: Db,
        products: Arc<CommandExecutor<Product>>,
        customers: Arc<CommandExecutor<Customer>>,
        secrets: Option<SecretsKey>,
    ) -> Self {
        Self {
            jobs: Arc::new(CommandExecutor::new(db.clone())),
            db,
            products,
            customers,
            secrets,
            transport: Transport::default(),
            wake: Notify::new(),
            running: Mutex::default(),
        }
    }

    /// Uses other timeouts and retries towards 1C.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Queues a job and records its start; answers the running job instead
    /// when the integration already has one of this kind.
    pub async fn start(&self, job: Queued) -> Result<Started, StartError> {
        if let Some(running) = queue::enqueue(&self.db, &job).await? {
            return Ok(Started {
                job_id: running,
                already_running: true,
                position: None,
            });
        }
        let recorded = self.record_start(&job).await;
        if recorded.is_err() {
            // Nothing was started: free the slot for the next attempt.
            queue::dequeue(&self.db, &job.job_id).await?;
        }
        let position = recorded?;
        self.wake.notify_one();
        Ok(Started {
            job_id: job.job_id,
            already_running: false,
            position,
        })
    }

    async fn record_start(&self, job: &Queued) -> Result<Option<PositionToken>, StartError> {
        let parts = job_parts(job).map_err(StartError::Refused)?;
        let integration_id = match &job.integration_id {
            Some(id) => {
                Some(Id::parse(id.as_str()).map_err(|e| StartError::Refused(e.to_string()))?)
            }
            None => None,
        };
        let command = ImportJobCommand::Start {
            job_id: parts.job_id,
            integration_id,
            kind: parts.kind,
            source: parts.source,
            at: Utc::now(),
        };
        let executed = self
            .jobs
            .execute(&parts.stream, command, &self.metadata(job))
            .await
            .map_err(|error| match error {
                CommandError::Storage(error) => StartError::Storage(error),
                other => StartError::Refused(other.to_string()),
            })?;
        Ok(executed.position)
    }

    fn metadata(&self, job: &Queued) -> EventMetadata {
        let source = match job.source.as_str() {
            "commerceml" => "upload",
            _ => karvon_projections::metadata::Source::OneC.as_str(),
        };
        EventMetadata {
            tenant_id: job.tenant_id.clone(),
            occurred_at: Utc::now(),
            source: source.to_string(),
            actor: job.actor.clone(),
            correlation_id: job.job_id.clone(),
            causation_id: None,
            idempotency_key: None,
            request_hash: None,
            response_id: None,
        }
    }

    /// Runs queued jobs until `shutdown`: every instance may run this; on
    /// PostgreSQL a job runs where its advisory lock is held.
    pub async fn run_worker(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(PARALLEL_JOBS));
        loop {
            match queue::queued(&self.db).await {
                Ok(jobs) => {
                    for job in jobs {
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        if !self.claim_locally(&job.job_id) {
                            continue;
                        }
                        let imports = self.clone();
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move {
                            let job_id = job.job_id.clone();
                            if let Err(error) = imports.run_locked(job, shutdown).await {
                                tracing::warn!(job_id, %error, "import job stopped; retried later");
                            }
                            imports.release_locally(&job_id);
                            drop(slot);
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "reading the import queue failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn claim_locally(&self, job_id: &str) -> bool {
        self.running
            .lock()
            .map(|mut running| running.insert(job_id.to_string()))
            .unwrap_or(false)
    }

    fn release_locally(&self, job_id: &str) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(job_id);
        }
    }

    /// Runs a job while holding its lock (PostgreSQL: a session advisory
    /// lock on a connection of its own, released when it closes, also by a
    /// crash; SQLite: one process owns the file).
    async fn run_locked(
        &self,
        job: Queued,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), StorageError> {
        match &self.db {
            Db::Postgres(pool) => {
                let mut lock = pool.acquire().await?.detach();
                let key = format!("karvon:import:{}", job.job_id);
                let taken: bool =
                    sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                        .bind(&key)
                        .fetch_one(&mut lock)
                        .await?;
                if !taken {
                    return Ok(());
                }
                let ran = self.run(&job, shutdown).await;
                use sqlx::Connection;
                let _ = lock.close().await;
                ran
            }
            Db::Sqlite(_) => self.run(&job, shutdown).await,
        }
    }

    /// Runs one job to its end (or until `shutdown`): reads the source,
    /// then commits the chunks from the first not yet committed.
    async fn run(&self, job: &Queued, shutdown: watch::Receiver<bool>) -> Result<(), StorageError> {
        let parts = match job_parts(job) {
            Ok(parts) => parts,
            Err(why) => {
                tracing::error!(job_id = job.job_id, why, "unreadable queued job dropped");
                return queue::dequeue(&self.db, &job.job_id).await;
            }
        };
        let stream = parts.stream.as_str();
        let state = self.jobs.load(stream).await?;
        if !state.is_started() {
            // The start was queued but not recorded (a crash in between).
            if let Err(error) = self.record_start(job).await {
                return Err(StorageError::EventStore(error.to_string()));
            }
        } else if state.status().is_finished() {
            return self.finish(job).await;
        }
        let fetched = match self.fetch(job, parts.kind, parts.source).await {
            Ok(fetched) => fetched,
            Err(message) => return self.fail(job, stream, message).await,
        };
        let (total, chunk_size) = match &fetched {
            Fetched::Products {
                records,
                chunk_size,
                ..
            } => (records.len(), *chunk_size),
            Fetched::Clients {
                records,
                chunk_size,
            } => (records.len(), *chunk_size),
        };
        self.command(
            job,
            stream,
            ImportJobCommand::RecordFetched {
                total: total as u64,
            },
        )
        .await?;
        let chunks = total.div_ceil(chunk_size.max(1));
        let mut chunk = self.jobs.load(stream).await?.next_chunk() as usize;
        while chunk < chunks {
            if *shutdown.borrow() {
                return Ok(());
            }
            let range = chunk * chunk_size..((chunk + 1) * chunk_size).min(total);
            match self.commit_chunk(job, &parts, &fetched, chunk, range).await {
                Ok(()) => chunk += 1,
                Err(ChunkError::OutOfTurn) => {
                    // Another runner committed it (a lock lost and taken over).
                    chunk = self.jobs.load(stream).await?.next_chunk() as usize;
                }
                Err(ChunkError::Finished) => return self.finish(job).await,
                Err(ChunkError::Storage(error)) => return Err(error),
            }
        }
        self.command(job, stream, ImportJobCommand::Complete { at: Utc::now() })
            .await?;
        self.finish(job).await
    }

    /// Runs a job command; a finished job takes none and that is fine.
    async fn command(
        &self,
        job: &Queued,
        stream: &str,
        command: ImportJobCommand,
    ) -> Result<(), StorageError> {
        match self
            .jobs
            .execute(stream, command, &self.metadata(job))
            .await
        {
            Ok(_) | Err(CommandError::Domain(ImportJobError::Finished)) => Ok(()),
            Err(CommandError::Storage(error)) => Err(error),
            Err(other) => Err(StorageError::EventStore(other.to_string())),
        }
    }

    async fn fail(&self, job: &Queued, stream: &str, message: String) -> Result<(), StorageError> {
        tracing::warn!(job_id = job.job_id, message, "import job failed");
        self.command(
            job,
            stream,
            ImportJobCommand::Fail {
                message,
                at: Utc::now(),
            },
        )
        .await?;
        self.finish(job).await
    }

    /// Takes a finished job off the queue and drops its upload.
    async fn finish(&self, job: &Queued) -> Result<(), StorageError> {
        queue::dequeue(&self.db, &job.job_id).await?;
        if let Some(dir) = &job.upload_dir {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
        Ok(())
    }

    /// Reads the job's whole source; the message says why it could not.
    async fn fetch(
        &self,
        job: &Queued,
        kind: ImportKind,
        source: ImportSource,
    ) -> Result<Fetched, String> {
        let config = self.source(job).await?;
        let chunk_size = |key: &str| {
            config
                .settings
                .get(key)
                .and_then(Value::as_u64)
                .map_or(100, |size| size.clamp(1, 10_000) as usize)
        };
        let text = |map: &Map<String, Value>, key: &str| {
            map.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let transport = match config.settings.get("timeout_secs").and_then(Value::as_u64) {
            Some(secs) => Transport {
                timeout: Duration::from_secs(secs.max(1)),
                ..self.transport.clone()
            },
            None => self.transport.clone(),
        };
        let failed = |error: SourceError| error.to_string();
        match source {
            ImportSource::OneCSoap => {
                let client = onec::soap::Client::new(
                    &text(&config.settings, "url"),
                    &text(&config.settings, "namespace"),
                    &text(&config.secrets, "username"),
                    &text(&config.secrets, "password"),
                    transport,
                )
                .map_err(failed)?;
                let (operation, default) = match kind {
                    ImportKind::Products => ("products_operation", "GetProductList"),
                    ImportKind::Clients => ("clients_operation", "GetClientList"),
                };
                let operation = match text(&config.settings, operation) {
                    name if name.is_empty() => default.to_string(),
                    name => name,
                };
                let body = client.call(&operation).await.map_err(failed)?;
                let chunk_size = chunk_size("chunk_size");
                blocking(move || match kind {
                    ImportKind::Products => onec::soap::parse_products(&body)
                        .map(|records| products(records, chunk_size)),
                    ImportKind::Clients => {
                        onec::soap::parse_clients(&body).map(|records| Fetched::Clients {
                            records,
                            chunk_size,
                        })
                    }
                })
                .await?
                .map_err(failed)
            }
            ImportSource::OneCOdata => {
                let client = onec::odata::Client::new(
                    &text(&config.settings, "base_url"),
                    &text(&config.secrets, "username"),
                    &text(&config.secrets, "password"),
                    transport,
                )
                .map_err(failed)?;
                let page = chunk_size("page_size");
                match kind {
                    ImportKind::Products => {
                        let entity = match text(&config.settings, "products_entity") {
                            name if name.is_empty() => "Catalog_Номенклатура".to_string(),
                            name => name,
                        };
                        let records = client.all_products(&entity, page).await.map_err(failed)?;
                        Ok(products(records, page))
                    }
                    ImportKind::Clients => {
                        let entity = match text(&config.settings, "clients_entity") {
                            name if name.is_empty() => "Catalog_Контрагенты".to_string(),
                            name => name,
                        };
                        let records = client.all_clients(&entity, page).await.map_err(failed)?;
                        Ok(Fetched::Clients {
                            records,
                            chunk_size: page,
                        })
                    }
                }
            }
            ImportSource::Commerceml => {
                let dir = PathBuf::from(job.upload_dir.clone().unwrap_or_default());
                let price_type = config
                    .settings
                    .get("price_type")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let chunk_size = chunk_size("chunk_size");
                blocking(move || read_commerceml(&dir, price_type.as_deref(), chunk_size)).await?
            }
        }
    }

    /// The job's integration settings and opened secrets (none for an
    /// upload that names no integration).
    async fn source(&self, job: &Queued) -> Result<Source, String> {
        let Some(id) = &job.integration_id else {
            return Ok(Source {
                settings: Map::new(),
                secrets: Map::new(),
            });
        };
        let gone = || format!("integration {id} no longer exists");
        let uuid = Uuid::parse_str(id).map_err(|_| gone())?;
        let stored = integrations::get(&self.db, uuid)
            .await
            .map_err(|error| format!("reading integration {id}: {error}"))?
            .filter(|stored| stored.tenant_id == job.tenant_id)
            .ok_or_else(gone)?;
        let secrets = match (&self.secrets, stored.sealed_secrets.is_empty()) {
            (_, true) => Map::new(),
            (Some(key), false) => key
                .open(uuid, &stored.sealed_secrets)
                .map_err(|error| error.to_string())?,
            (None, false) => {
                return Err("no secrets key is configured to open the 1C credentials".into());
            }
        };
        let settings = match stored.settings {
            Value::Object(settings) => settings,
            _ => Map::new(),
        };
        Ok(Source { settings, secrets })
    }

    /// Decides and commits one chunk together with its outcome.
    async fn commit_chunk(
        &self,
        job: &Queued,
        parts: &Parts,
        fetched: &Fetched,
        chunk: usize,
        range: std::ops::Range<usize>,
    ) -> Result<(), ChunkError> {
        let (tenant, stream) = (&parts.tenant, parts.stream.as_str());
        let metadata = self.metadata(job);
        let mut attempt = 0u64;
        loop {
            let (mut writes, outcome, touched) = match fetched {
                Fetched::Products {
                    folders, records, ..
                } => {
                    self.product_writes(tenant, folders, &records[range.clone()])
                        .await?
                }
                Fetched::Clients { records, .. } => {
                    self.client_writes(tenant, &records[range.clone()]).await?
                }
            };
            let loaded = self.jobs.load_many(&[stream.to_string()]).await?;
            let Some(job_state) = loaded.first() else {
                return Err(ChunkError::Storage(StorageError::Corrupt(
                    "no job state".into(),
                )));
            };
            match job_state
                .handle(ImportJobCommand::ProcessChunk {
                    chunk: chunk as u64,
                    outcome,
                })
                .await
            {
                Ok(Some(write)) => writes.push(write),
                Ok(None) => return Ok(()),
                Err(CommandError::Domain(ImportJobError::OutOfTurn { .. })) => {
                    return Err(ChunkError::OutOfTurn);
                }
                Err(CommandError::Domain(_)) => return Err(ChunkError::Finished),
                Err(error) => {
                    return Err(ChunkError::Storage(StorageError::EventStore(
                        error.to_string(),
                    )));
                }
            }
            match commit_batch(&self.db, &writes, &metadata).await {
                Ok(()) => {
                    match fetched {
                        Fetched::Products { .. } => self.products.forget(&touched),
                        Fetched::Clients { .. } => self.customers.forget(&touched),
                    }
                    self.jobs.forget([stream]);
                    return Ok(());
                }
                Err(BatchError::Conflict) if attempt < 10 => {
                    // A record was written meanwhile (an HTTP command): decide again.
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Err(BatchError::Conflict) => {
                    return Err(ChunkError::Storage(StorageError::EventStore(
                        "the chunk's records keep changing under it".into(),
                    )));
                }
                Err(BatchError::Storage(error)) => return Err(ChunkError::Storage(error)),
            }
        }
    }

    /// The writes a chunk of products makes, what it did, and the streams
    /// it writes.
    async fn product_writes(
        &self,
        tenant: &Id,
        folders: &HashMap<String, String>,
        records: &[Parsed<ProductRecord>],
    ) -> Result<(Vec<StreamWrite>, ChunkOutcome, Vec<String>), StorageError> {
        let mut outcome = ChunkOutcome::default();
        let mut wanted = Vec::new();
        let mut seen = HashSet::new();
        for record in records {
            match record {
                Parsed::Rejected { reference, reason } => reject(&mut outcome, reference, reason),
                Parsed::Ok(record) => match Id::parse(record.guid.as_str()) {
                    Err(error) => reject(&mut outcome, &record.guid, &format!("GUID: {error}")),
                    Ok(_) if !seen.insert(record.guid.clone()) => reject(
                        &mut outcome,
                        &record.guid,
                        "the GUID appears twice in this import",
                    ),
                    Ok(id) => wanted.push((product_stream_id(tenant, &id), id, record)),
                },
            }
        }
        let streams: Vec<String> = wanted.iter().map(|(stream, ..)| stream.clone()).collect();
        let loaded = self.products.load_many(&streams).await?;
        let mut writes = Vec::new();
        for ((_, id, record), loaded) in wanted.into_iter().zip(loaded) {
            let state = loaded.state();
            let known = state.details();
            let command = if record.deletion_mark {
                match state.status() {
                    ProductStatus::Active if state.is_registered() => ProductCommand::Discontinue {
                        reason: Some("deletion mark set in 1C".into()),
                    },
                    _ => {
                        outcome.unchanged += 1;
                        continue;
                    }
                }
            } else {
                let details = match product_details(record, folders, known) {
                    Ok(details) => details,
                    Err(reason) => {
                        reject(&mut outcome, &record.guid, &reason);
                        continue;
                    }
                };
                if !state.is_registered() {
                    ProductCommand::Register {
                        product_id: id,
                        details,
                    }
                } else {
                    ProductCommand::Update { details }
                }
            };
            let created = !state.is_registered();
            match loaded.handle(command).await {
                Ok(Some(write)) => {
                    if created {
                        outcome.created += 1;
                    } else {
                        outcome.updated += 1;
                    }
                    writes.push(write);
                }
                Ok(None) => outcome.unchanged += 1,
                Err(CommandError::Domain(error)) => {
                    reject(&mut outcome, &record.guid, &error.to_string())
                }
                Err(CommandError::Storage(error)) => return Err(error),
                Err(other) => return Err(StorageError::EventStore(other.to_string())),
            }
        }
        Ok((writes, outcome, streams))
    }

    /// The same for a chunk of clients (customers keyed by their GUID).
    async fn client_writes(
        &self,
        tenant: &Id,
        records: &[Parsed<ClientRecord>],
    ) -> Result<(Vec<StreamWrite>, ChunkOutcome, Vec<String>), StorageError> {
        let mut outcome = ChunkOutcome::default();
        let mut wanted = Vec::new();
        let mut seen = HashSet::new();
        for record in records {
            match record {
                Parsed::Rejected { reference, reason } => reject(&mut outcome, reference, reason),
                Parsed::Ok(record) => match Id::parse(record.guid.as_str()) {
                    Err(error) => reject(&mut outcome, &record.guid, &format!("GUID: {error}")),
                    Ok(_) if !seen.insert(record.guid.clone()) => reject(
                        &mut outcome,
                        &record.guid,
                        "the GUID appears twice in this import",
                    ),
                    Ok(id) => wanted.push((customer_stream_id(tenant, &id), id, record)),
                },
            }
        }
        let streams: Vec<String> = wanted.iter().map(|(stream, ..)| stream.clone()).collect();
        let loaded = self.customers.load_many(&streams).await?;
        let mut writes = Vec::new();
        for ((_, id, record), loaded) in wanted.into_iter().zip(loaded) {
            let known = loaded.state().details();
            let registered = known.is_some();
            if record.deletion_mark {
                // Customers have no "deactivated" state yet: a marked
                // client is left as it is.
                outcome.unchanged += 1;
                continue;
            }
            let details = CustomerDetails {
                name: record.name.clone(),
                phone: record.phone.clone(),
                email: known.and_then(|known| known.email.clone()),
                tax_id: record.tax_id.clone(),
                address: record.address.clone(),
            };
            let command = if registered {
                CustomerCommand::Update { details }
            } else {
                CustomerCommand::Register {
                    customer_id: id,
                    details,
                }
            };
            match loaded.handle(command).await {
                Ok(Some(write)) => {
                    if registered {
                        outcome.updated += 1;
                    } else {
                        outcome.created += 1;
                    }
                    writes.push(write);
                }
                Ok(None) => outcome.unchanged += 1,
                Err(CommandError::Domain(error)) => {
                    reject(&mut outcome, &record.guid, &error.to_string())
                }
                Err(CommandError::Storage(error)) => return Err(error),
                Err(other) => return Err(StorageError::EventStore(other.to_string())),
            }
        }
        Ok((writes, outcome, streams))
    }
}

enum ChunkError {
    OutOfTurn,
    Finished,
    Storage(StorageError),
}

impl From<StorageError> for ChunkError {
    fn from(error: StorageError) -> Self {
        ChunkError::Storage(error)
    }
}

fn reject(outcome: &mut ChunkOutcome, reference: &str, reason: &str) {
    outcome.rejected.push(Rejection {
        reference: reference.to_string(),
        reason: reason.to_string(),
    });
}

/// A queued row, read.
struct Parts {
    tenant: Id,
    job_id: Id,
    kind: ImportKind,
    source: ImportSource,
    /// The job's stream.
    stream: String,
}

fn job_parts(job: &Queued) -> Result<Parts, String> {
    fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, String> {
        serde_json::from_value(Value::String(text.to_string()))
            .map_err(|_| format!("{what} {text:?} is unknown"))
    }
    let id = |text: &str| Id::parse(text).map_err(|error| format!("{text:?}: {error}"));
    let tenant = id(&job.tenant_id)?;
    let job_id = id(&job.job_id)?;
    Ok(Parts {
        stream: import_job_stream_id(&tenant, &job_id),
        tenant,
        job_id,
        kind: parse("kind", &job.kind)?,
        source: parse("source", &job.source)?,
    })
}

/// Folders become categories; everything else is a product to write.
fn products(records: Vec<Parsed<ProductRecord>>, chunk_size: usize) -> Fetched {
    let mut folders = HashMap::new();
    let mut items = Vec::with_capacity(records.len());
    for record in records {
        match record {
            Parsed::Ok(record) if record.is_folder => {
                folders.insert(record.guid, record.name);
            }
            other => items.push(other),
        }
    }
    Fetched::Products {
        folders,
        records: items,
        chunk_size,
    }
}

/// An uploaded `import.xml` (+ `offers.xml`), streamed from disk.
fn read_commerceml(
    dir: &Path,
    price_type: Option<&str>,
    chunk_size: usize,
) -> Result<Fetched, String> {
    use std::io::BufReader;
    let open = |name: &str| std::fs::File::open(dir.join(name)).map(BufReader::new);
    let import =
        open("import.xml").map_err(|error| format!("the uploaded import.xml is gone: {error}"))?;
    let offers = open("offers.xml").ok();
    let catalog =
        onec::commerceml::parse(import, offers, price_type).map_err(|error| error.to_string())?;
    let folders = catalog
        .folders
        .into_iter()
        .map(|(guid, name, _)| (guid, name))
        .collect();
    Ok(Fetched::Products {
        folders,
        records: catalog.products,
        chunk_size,
    })
}

/// Runs CPU-heavy parsing off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| format!("reading the source failed: {error}"))
}

/// The product 1C describes, keeping what 1C does not send (the reorder
/// level) from what Karvon knows. `Err` says why the record is refused.
pub fn product_details(
    record: &ProductRecord,
    folders: &HashMap<String, String>,
    known: Option<&ProductDetails>,
) -> Result<ProductDetails, String> {
    let first = |candidates: [&str; 3]| {
        candidates
            .into_iter()
            .map(str::trim)
            .find(|text| !text.is_empty())
            .unwrap_or_default()
            .to_string()
    };
    let category = record
        .parent
        .as_ref()
        .and_then(|parent| folders.get(parent))
        .map_or_else(|| NO_CATEGORY.to_string(), Clone::clone);
    let price = record
        .price
        .map(|price| Money::parse(price).map_err(|error| format!("Price {price}: {error}")))
        .transpose()?;
    let details = ProductDetails {
        sku: first([&record.article, &record.code, &record.guid]),
        name: record.name.trim().to_string(),
        category,
        unit: match record.unit.trim() {
            "" => DEFAULT_UNIT.to_string(),
            unit => unit.to_string(),
        },
        barcode: record.barcode.clone(),
        price,
        reorder_level: known.and_then(|known| known.reorder_level),
        external_refs: [(ONE_C.to_string(), record.guid.clone())].into(),
    };
    details.validate().map_err(|error| error.to_string())?;
    Ok(details)
}
