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
mod schedule;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use karvon_domain::customer::{Customer, CustomerCommand, CustomerDetails};
use karvon_domain::ids::sale_stream_id;
use karvon_domain::ids::{customer_stream_id, import_job_stream_id, product_stream_id};
use karvon_domain::import_job::{
    ChunkOutcome, ImportJob, ImportJobCommand, ImportJobError, ImportKind, ImportSource, Rejection,
};
use karvon_domain::product::{Product, ProductCommand, ProductDetails, ProductStatus};
use karvon_domain::sale::{PaymentType, Sale, SaleCommand, SaleDetails, SaleLine, SaleType};
use karvon_domain::{Id, Money, Quantity};
use karvon_projections::{EventMetadata, PositionToken};
use serde_json::{Map, Value};
use tokio::sync::{Notify, Semaphore, watch};
use uuid::Uuid;

use crate::StorageError;
use crate::db::Db;
use crate::integrations::{self, SecretsKey};
use crate::onec::{self, ClientRecord, Parsed, ProductRecord, SourceError, Transport};
use crate::regos::{self, Cheque, ChequeLine, Pace};
use crate::store::{BatchError, CommandError, CommandExecutor, Loaded, StreamWrite, commit_batch};
pub use queue::Queued;

/// The category of a product 1C files under no folder.
pub const NO_CATEGORY: &str = "uncategorized";
/// The unit of a product 1C sends without one.
pub const DEFAULT_UNIT: &str = "шт";
/// The system name of 1C references in `external_refs`.
pub const ONE_C: &str = "1c";

/// Jobs one instance runs at once.
const PARALLEL_JOBS: usize = 2;
/// How many runs of one job may end the process before it fails.
const MAX_STARTS: i64 = 3;
/// How long a job that stopped on a storage error waits before it runs again.
const RETRY: Duration = Duration::from_secs(30);
/// How often the worker looks for daily syncs that are due.
const SCHEDULE: Duration = Duration::from_secs(30);
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
    sales: Arc<CommandExecutor<Sale>>,
    jobs: Arc<CommandExecutor<ImportJob>>,
    secrets: Option<SecretsKey>,
    transport: Transport,
    pace: Pace,
    wake: Notify,
    /// Jobs this instance runs now.
    running: Mutex<HashSet<String>>,
    /// Jobs that stopped on a storage error, and when to try them again.
    retry_at: Mutex<HashMap<String, std::time::Instant>>,
    /// Uploads being received per tenant (not yet queued).
    receiving: Mutex<HashMap<String, usize>>,
    /// Webhook cheque fetches per integration: its slots and the cheques
    /// waiting or in flight.
    cheques: Mutex<HashMap<String, ChequeFetches>>,
}

/// One integration's webhook cheque fetches: its slots, and the cheques
/// waiting or in flight.
type ChequeFetches = (Arc<Semaphore>, HashSet<String>);

/// Webhook cheque fetches running at once per REGOS integration.
const CHEQUE_FETCHES: usize = 2;
/// Webhook cheques waiting per REGOS integration at most.
const CHEQUES_WAITING: usize = 1_000;

/// Queued or running uploads a tenant may have at once.
pub const MAX_UPLOADS_PER_TENANT: i64 = 2;

/// An upload being received; its place is given back when dropped (by
/// then it is queued, or it failed).
pub struct UploadReservation {
    imports: Arc<Imports>,
    tenant: String,
}

impl Drop for UploadReservation {
    fn drop(&mut self) {
        let mut receiving = self
            .imports
            .receiving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = receiving.get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                receiving.remove(&self.tenant);
            }
        }
    }
}

/// Everything a job needs to read its source.
struct Source {
    settings: Map<String, Value>,
    secrets: Map<String, Value>,
}

/// A source read whole (or, for an upload, counted: its records are read
/// again chunk by chunk, see [`UploadReader`]).
enum Fetched {
    /// An uploaded CommerceML catalogue: its folders and how many records
    /// it holds.
    Upload {
        folders: HashMap<String, String>,
        total: usize,
        dir: PathBuf,
        price_type: Option<String>,
        chunk_size: usize,
    },
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
    /// Closed cheques of the window; their lines are read chunk by chunk.
    Sales {
        cheques: Vec<Result<Cheque, Rejection>>,
        client: regos::Client,
        /// REGOS stock id → Karvon branch id.
        branch_map: HashMap<i64, String>,
        chunk_size: usize,
    },
}

impl Fetched {
    fn len(&self) -> usize {
        match self {
            Fetched::Upload { total, .. } => *total,
            Fetched::Products { records, .. } => records.len(),
            Fetched::Clients { records, .. } => records.len(),
            Fetched::Sales { cheques, .. } => cheques.len(),
        }
    }

    fn chunk_size(&self) -> usize {
        match self {
            Fetched::Upload { chunk_size, .. }
            | Fetched::Products { chunk_size, .. }
            | Fetched::Clients { chunk_size, .. }
            | Fetched::Sales { chunk_size, .. } => (*chunk_size).max(1),
        }
    }
}

impl Imports {
    pub fn new(
        db: Db,
        products: Arc<CommandExecutor<Product>>,
        customers: Arc<CommandExecutor<Customer>>,
        sales: Arc<CommandExecutor<Sale>>,
        secrets: Option<SecretsKey>,
    ) -> Self {
        Self {
            jobs: Arc::new(CommandExecutor::new(db.clone())),
            db,
            products,
            customers,
            sales,
            secrets,
            transport: Transport::default(),
            pace: Pace::default(),
            wake: Notify::new(),
            running: Mutex::default(),
            retry_at: Mutex::default(),
            receiving: Mutex::default(),
            cheques: Mutex::default(),
        }
    }

    /// The key that opens integration secrets, if the server has one.
    pub fn secrets_key(&self) -> Option<SecretsKey> {
        self.secrets.clone()
    }

    /// A place for one more upload of `tenant`, or `None` when it already
    /// has [`MAX_UPLOADS_PER_TENANT`] queued, running or being received
    /// (here; another instance's in-flight uploads are seen once queued).
    pub async fn reserve_upload(
        self: &Arc<Self>,
        tenant: &str,
    ) -> Result<Option<UploadReservation>, StorageError> {
        let queued = queue::uploads_of(&self.db, tenant).await?;
        let mut receiving = self
            .receiving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = receiving.entry(tenant.to_string()).or_default();
        if queued + *count as i64 >= MAX_UPLOADS_PER_TENANT {
            if *count == 0 {
                receiving.remove(tenant);
            }
            return Ok(None);
        }
        *count += 1;
        Ok(Some(UploadReservation {
            imports: self.clone(),
            tenant: tenant.to_string(),
        }))
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
        use karvon_projections::metadata::Source;
        let source = match job.source.as_str() {
            "commerceml" => "upload",
            "regos" => Source::Regos.as_str(),
            _ => Source::OneC.as_str(),
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
        let mut next_schedule = std::time::Instant::now();
        loop {
            if std::time::Instant::now() >= next_schedule {
                next_schedule = std::time::Instant::now() + SCHEDULE;
                if let Err(error) = self.start_due_runs().await {
                    tracing::warn!(%error, "starting the daily REGOS syncs failed");
                }
            }
            match queue::queued(&self.db).await {
                Ok(jobs) => {
                    for job in jobs {
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        if self.backing_off(&job.job_id) || !self.claim_locally(&job.job_id) {
                            continue;
                        }
                        let imports = self.clone();
                        let shutdown = shutdown.clone();
                        tokio::spawn(async move {
                            let job_id = job.job_id.clone();
                            if let Err(error) = imports.run_locked(job, shutdown).await {
                                tracing::warn!(job_id, %error, "import job stopped; retried in 30 s");
                                imports.back_off(&job_id);
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

    /// Whether a job that stopped on a storage error still waits.
    fn backing_off(&self, job_id: &str) -> bool {
        let Ok(mut retry_at) = self.retry_at.lock() else {
            return false;
        };
        match retry_at.get(job_id) {
            Some(at) if *at > std::time::Instant::now() => true,
            Some(_) => {
                retry_at.remove(job_id);
                false
            }
            None => false,
        }
    }

    fn back_off(&self, job_id: &str) {
        if let Ok(mut retry_at) = self.retry_at.lock() {
            retry_at.insert(job_id.to_string(), std::time::Instant::now() + RETRY);
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
                let ran = self.run_counted(&job, shutdown).await;
                use sqlx::Connection;
                let _ = lock.close().await;
                ran
            }
            Db::Sqlite(_) => self.run_counted(&job, shutdown).await,
        }
    }

    /// Runs a job unless earlier runs of it ended the process
    /// [`MAX_STARTS`] times: each start is counted in its queue row before
    /// the run and uncounted when the run returns, so only runs that never
    /// returned (the process died under them) stay counted. A job that
    /// keeps killing the process fails instead of killing it at every start.
    async fn run_counted(
        &self,
        job: &Queued,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), StorageError> {
        let Some(starts) = queue::count_start(&self.db, &job.job_id).await? else {
            return Ok(()); // finished meanwhile
        };
        if starts > MAX_STARTS {
            let message = format!(
                "the job was started {MAX_STARTS} times and the process ended during each run; not started again"
            );
            return match job_parts(job) {
                Ok(parts) => self.fail(job, &parts.stream, message).await,
                Err(_) => queue::dequeue(&self.db, &job.job_id).await,
            };
        }
        let ran = self.run(job, shutdown).await;
        queue::uncount_start(&self.db, &job.job_id).await?;
        ran
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
        let (total, chunk_size) = (fetched.len(), fetched.chunk_size());
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
        let mut upload: Option<UploadReader> = None;
        while chunk < chunks {
            if *shutdown.borrow() {
                return Ok(());
            }
            let range = chunk * chunk_size..((chunk + 1) * chunk_size).min(total);
            // An upload is read again as a stream, one chunk at a time.
            let streamed = match &fetched {
                Fetched::Upload {
                    dir, price_type, ..
                } => {
                    let reader = match &mut upload {
                        Some(reader) if reader.next == range.start => reader,
                        _ => upload.insert(UploadReader::start(
                            dir.clone(),
                            price_type.clone(),
                            range.start,
                            chunk_size,
                        )),
                    };
                    match reader.take(range.len()).await {
                        Ok(records) => Some(records),
                        Err(message) => return self.fail(job, stream, message).await,
                    }
                }
                _ => None,
            };
            match self
                .commit_chunk(job, &parts, &fetched, streamed.as_deref(), chunk, range)
                .await
            {
                Ok(()) => chunk += 1,
                Err(ChunkError::OutOfTurn) => {
                    // Another runner committed it (a lock lost and taken over).
                    chunk = self.jobs.load(stream).await?.next_chunk() as usize;
                }
                Err(ChunkError::Finished) => return self.finish(job).await,
                Err(ChunkError::Source(message)) => return self.fail(job, stream, message).await,
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
        match (kind, source) {
            (ImportKind::Sales, ImportSource::Regos) => {}
            (ImportKind::Sales, _) | (_, ImportSource::Regos) => {
                return Err(format!(
                    "a {} job cannot import {}",
                    spelled(&source),
                    spelled(&kind)
                ));
            }
            _ => {}
        }
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
        let mut transport = match config.settings.get("timeout_secs").and_then(Value::as_u64) {
            Some(secs) => Transport {
                timeout: Duration::from_secs(secs.max(1)),
                ..self.transport.clone()
            },
            None => self.transport.clone(),
        };
        if let Some(cap) = max_response_bytes(&config.settings) {
            transport.max_response_bytes = cap;
        }
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
                let (operation, default) = if kind == ImportKind::Clients {
                    ("clients_operation", "GetClientList")
                } else {
                    ("products_operation", "GetProductList")
                };
                let operation = match text(&config.settings, operation) {
                    name if name.is_empty() => default.to_string(),
                    name => name,
                };
                let body = client.call(&operation).await.map_err(failed)?;
                let chunk_size = chunk_size("chunk_size");
                blocking(move || {
                    if kind == ImportKind::Clients {
                        onec::soap::parse_clients(&body).map(|records| Fetched::Clients {
                            records,
                            chunk_size,
                        })
                    } else {
                        onec::soap::parse_products(&body)
                            .map(|records| products(records, chunk_size))
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
                    ImportKind::Products | ImportKind::Sales => {
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
            ImportSource::Regos => self.fetch_cheques(job, &config).await,
            ImportSource::Commerceml => {
                let dir = PathBuf::from(job.upload_dir.clone().unwrap_or_default());
                let price_type = config
                    .settings
                    .get("price_type")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let chunk_size = chunk_size("chunk_size");
                blocking(move || count_commerceml(dir, price_type, chunk_size)).await?
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
        streamed: Option<&[Parsed<ProductRecord>]>,
        chunk: usize,
        range: std::ops::Range<usize>,
    ) -> Result<(), ChunkError> {
        let (tenant, stream) = (&parts.tenant, parts.stream.as_str());
        let metadata = self.metadata(job);
        let mut attempt = 0u64;
        loop {
            let (mut writes, outcome, touched) = match fetched {
                Fetched::Upload { folders, .. } => {
                    self.product_writes(tenant, folders, streamed.unwrap_or_default())
                        .await?
                }
                Fetched::Products {
                    folders, records, ..
                } => {
                    self.product_writes(tenant, folders, &records[range.clone()])
                        .await?
                }
                Fetched::Clients { records, .. } => {
                    self.client_writes(tenant, &records[range.clone()]).await?
                }
                Fetched::Sales {
                    cheques,
                    client,
                    branch_map,
                    ..
                } => {
                    self.sale_writes(tenant, client, branch_map, &cheques[range.clone()])
                        .await?
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
                        Fetched::Upload { .. } | Fetched::Products { .. } => {
                            self.products.forget(&touched)
                        }
                        Fetched::Clients { .. } => self.customers.forget(&touched),
                        Fetched::Sales { .. } => self.sales.forget(&touched),
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
        let wanted = admitted(records, |record| &record.guid, &mut outcome);
        let streams: Vec<String> = wanted
            .iter()
            .map(|(id, _)| product_stream_id(tenant, id))
            .collect();
        let loaded = self.products.load_many(&streams).await?;
        let mut writes = Vec::new();
        for ((id, record), loaded) in wanted.into_iter().zip(loaded) {
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
            let new = !state.is_registered();
            tally(
                &loaded,
                command,
                new,
                &record.guid,
                &mut outcome,
                &mut writes,
            )
            .await?;
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
        let wanted = admitted(records, |record| &record.guid, &mut outcome);
        let streams: Vec<String> = wanted
            .iter()
            .map(|(id, _)| customer_stream_id(tenant, id))
            .collect();
        let loaded = self.customers.load_many(&streams).await?;
        let mut writes = Vec::new();
        for ((id, record), loaded) in wanted.into_iter().zip(loaded) {
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
            let new = !registered;
            tally(
                &loaded,
                command,
                new,
                &record.guid,
                &mut outcome,
                &mut writes,
            )
            .await?;
        }
        Ok((writes, outcome, streams))
    }
}

/// REGOS sales: the window's closed cheques, then per chunk their lines.
impl Imports {
    /// Uses another pace towards REGOS (the bench switches the limit off).
    pub fn with_pace(mut self, pace: Pace) -> Self {
        self.pace = pace;
        self
    }

    /// The closed cheques of the job's window (local dates in the tenant's
    /// zone; default yesterday and today).
    async fn fetch_cheques(&self, job: &Queued, config: &Source) -> Result<Fetched, String> {
        let integration = job.integration_id.clone().unwrap_or_default();
        let client = self.regos_client(&integration, config)?;
        let zone = crate::auth_store::tenant(&self.db, &job.tenant_id)
            .await
            .map_err(|error| error.to_string())?
            .and_then(|tenant| tenant.time_zone.parse::<chrono_tz::Tz>().ok())
            .unwrap_or(chrono_tz::UTC);
        let (from, to) = window(job.params.as_deref(), zone)?;
        let filter = serde_json::json!({
            "start_date": from.timestamp(),
            "end_date": to.timestamp(),
        });
        // Cheques (default), or the flattened `Sale/Get` rows.
        let sale_rows = match config.settings.get("sales_source").and_then(Value::as_str) {
            None | Some("cheques") => false,
            Some("sale_rows") => true,
            Some(other) => {
                return Err(format!(
                    "settings.sales_source {other:?} is unknown (cheques or sale_rows)"
                ));
            }
        };
        let method = if sale_rows {
            "Sale/Get"
        } else {
            "DocCheque/Get"
        };
        let read = |row: &Value| {
            if sale_rows {
                regos::sale_row(row, zone)
            } else {
                regos::cheque(row)
            }
        };
        let rows = client
            .all(method, &filter)
            .await
            .map_err(|error| error.to_string())?;
        let mut seen = HashSet::new();
        let cheques = rows
            .iter()
            .map(read)
            .filter_map(|cheque| match cheque {
                // Other statuses (open, cancelled, postponed) are not sales.
                Ok(cheque) if !cheque.closed => None,
                // A cheque on two pages (the list moved while paging): once.
                Ok(cheque) if !seen.insert(cheque.uuid.clone()) => None,
                Ok(cheque) => Some(Ok(cheque)),
                Err(reason) => Some(Err(Rejection {
                    reference: method.to_string(),
                    reason,
                })),
            })
            .collect();
        let branch_map = branch_map(&config.settings);
        let chunk_size = config
            .settings
            .get("chunk_size")
            .and_then(Value::as_u64)
            .map_or(100, |size| size.clamp(1, 10_000) as usize);
        Ok(Fetched::Sales {
            cheques,
            client,
            branch_map,
            chunk_size,
        })
    }

    /// The gateway client of integration `id` (its rate, its key).
    fn regos_client(&self, id: &str, config: &Source) -> Result<regos::Client, String> {
        let text = |map: &Map<String, Value>, key: &str| {
            map.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let mut pace = self.pace.clone();
        if let Some(rate) = config
            .settings
            .get("requests_per_second")
            .and_then(Value::as_u64)
        {
            pace.rate = Some(rate as f64);
        }
        // Off only where REGOS itself does not limit (the bench's gateway).
        if config.settings.get("client_rate_limit") == Some(&Value::Bool(false)) {
            pace.rate = None;
        }
        if let Some(cap) = max_response_bytes(&config.settings) {
            pace.max_response_bytes = cap;
        }
        regos::Client::new(
            self.db.clone(),
            id,
            &text(&config.settings, "base_url"),
            &text(&config.secrets, "integration_key"),
            pace,
        )
        .map_err(|error| error.to_string())
    }

    /// Fetches and records cheque `uuid` in the background: once per
    /// cheque in flight, at most [`CHEQUE_FETCHES`] at a time per
    /// integration, at most [`CHEQUES_WAITING`] waiting (beyond, the daily
    /// sync records it).
    pub fn fetch_cheque_later(self: &Arc<Self>, tenant_id: &str, integration_id: &str, uuid: &str) {
        let slots = {
            let mut fetching = self
                .cheques
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (slots, waiting) = fetching
                .entry(integration_id.to_string())
                .or_insert_with(|| (Arc::new(Semaphore::new(CHEQUE_FETCHES)), HashSet::new()));
            if waiting.contains(uuid) {
                return;
            }
            if waiting.len() >= CHEQUES_WAITING {
                tracing::warn!(
                    integration = integration_id,
                    uuid,
                    "too many cheques waiting; the daily sync records this one"
                );
                return;
            }
            waiting.insert(uuid.to_string());
            slots.clone()
        };
        let (imports, tenant, integration, uuid) = (
            self.clone(),
            tenant_id.to_string(),
            integration_id.to_string(),
            uuid.to_string(),
        );
        tokio::spawn(async move {
            if let Ok(_slot) = slots.acquire().await {
                if let Err(why) = imports.sync_cheque(&tenant, &integration, &uuid).await {
                    // The daily sync picks the cheque up later.
                    tracing::warn!(
                        integration,
                        uuid,
                        why,
                        "recording a webhook's cheque failed"
                    );
                }
            }
            let mut fetching = imports
                .cheques
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((_, waiting)) = fetching.get_mut(&integration) {
                waiting.remove(&uuid);
                if waiting.is_empty() {
                    fetching.remove(&integration);
                }
            }
        });
    }

    /// Fetches one cheque (a `DocChequeClosed` webhook) and records its
    /// sale: the same mapping as a sync, content-idempotent.
    pub async fn sync_cheque(
        &self,
        tenant_id: &str,
        integration_id: &str,
        uuid: &str,
    ) -> Result<(), String> {
        let job = Queued {
            job_id: format!("webhook-{uuid}"),
            tenant_id: tenant_id.to_string(),
            integration_id: Some(integration_id.to_string()),
            kind: spelled(&ImportKind::Sales),
            source: spelled(&ImportSource::Regos),
            upload_dir: None,
            actor: format!("integration:{integration_id}"),
            params: None,
        };
        let tenant = Id::parse(tenant_id).map_err(|error| error.to_string())?;
        let config = self.source(&job).await?;
        let client = self.regos_client(integration_id, &config)?;
        let rows = client
            .call("DocCheque/Get", &serde_json::json!({"uuids": [uuid]}))
            .await
            .map_err(|error| error.to_string())?
            .rows;
        let cheque = rows
            .iter()
            .map(regos::cheque)
            .find(|cheque| cheque.as_ref().is_ok_and(|cheque| cheque.uuid == uuid))
            .ok_or_else(|| format!("REGOS does not know cheque {uuid}"))??;
        if !cheque.closed {
            return Ok(());
        }
        let branch_map = branch_map(&config.settings);
        let (writes, outcome, _) = self
            .sale_writes(&tenant, &client, &branch_map, &[Ok(cheque)])
            .await
            .map_err(|error| match error {
                ChunkError::Source(message) => message,
                ChunkError::Storage(error) => error.to_string(),
                ChunkError::OutOfTurn | ChunkError::Finished => "out of turn".to_string(),
            })?;
        if let Some(rejected) = outcome.rejected.first() {
            return Err(rejected.reason.clone());
        }
        let mut metadata = self.metadata(&job);
        metadata.correlation_id = format!("regos-webhook:{uuid}");
        match commit_batch(&self.db, &writes, &metadata).await {
            // A concurrent delivery of the same cheque got there first.
            Ok(()) | Err(BatchError::Conflict) => Ok(()),
            Err(BatchError::Storage(error)) => Err(error.to_string()),
        }
    }

    /// Reads the chunk's cheque lines and decides each cheque's sale.
    async fn sale_writes(
        &self,
        tenant: &Id,
        client: &regos::Client,
        branch_map: &HashMap<i64, String>,
        cheques: &[Result<Cheque, Rejection>],
    ) -> Result<(Vec<StreamWrite>, ChunkOutcome, Vec<String>), ChunkError> {
        let mut outcome = ChunkOutcome::default();
        let mut read = Vec::new();
        // Lines of several cheques in flight at once (the rate bucket still
        // paces them), answers kept in cheque order.
        let mut wanted_lines = Vec::new();
        for cheque in cheques {
            match cheque {
                Ok(cheque) => wanted_lines.push(cheque),
                Err(rejection) => outcome.rejected.push(rejection.clone()),
            }
        }
        let mut fetched = Vec::with_capacity(wanted_lines.len());
        for group in wanted_lines.chunks(LINE_REQUESTS) {
            let answers =
                futures::future::join_all(group.iter().map(|cheque| cheque_lines(client, cheque)))
                    .await;
            fetched.extend(group.iter().copied().zip(answers));
        }
        for (cheque, lines) in fetched {
            match lines.map_err(|error| ChunkError::Source(error.to_string()))? {
                Ok(lines) => read.push((cheque, lines)),
                Err(reason) => reject(&mut outcome, &cheque.uuid, &reason),
            }
        }
        let known = self.known_items(tenant, &read).await?;
        let mut wanted = Vec::new();
        for (cheque, lines) in read {
            match sale_of(cheque, &lines, branch_map, &known) {
                Ok((sale_id, details, unknown)) => wanted.push((
                    sale_stream_id(tenant, &sale_id),
                    sale_id,
                    details,
                    unknown,
                    cheque,
                )),
                Err(reason) => reject(&mut outcome, &cheque.uuid, &reason),
            }
        }
        let streams: Vec<String> = wanted.iter().map(|(stream, ..)| stream.clone()).collect();
        let loaded = self.sales.load_many(&streams).await?;
        let mut writes = Vec::new();
        for ((_, sale_id, details, unknown_products, cheque), loaded) in
            wanted.into_iter().zip(loaded)
        {
            let recorded = loaded.state().is_recorded();
            let command = SaleCommand::Sync {
                sale_id,
                details,
                is_return: cheque.is_return,
                unknown_products,
            };
            let new = !recorded;
            tally(
                &loaded,
                command,
                new,
                &cheque.uuid,
                &mut outcome,
                &mut writes,
            )
            .await?;
        }
        Ok((writes, outcome, streams))
    }

    /// The Karvon products of the chunk's items: by REGOS id, then by
    /// barcode.
    async fn known_items(
        &self,
        tenant: &Id,
        read: &[(&Cheque, Vec<ChequeLine>)],
    ) -> Result<Known, StorageError> {
        let lines = read.iter().flat_map(|(_, lines)| lines);
        let ids: Vec<String> = lines.clone().map(|line| line.item_id.to_string()).collect();
        let barcodes: Vec<String> = lines.filter_map(|line| line.barcode.clone()).collect();
        let mut reader = crate::records::tenant_reader(&self.db, tenant.as_str()).await?;
        let found = crate::read_models::catalog::by_reference_or_barcode(
            &mut reader,
            tenant.as_str(),
            REGOS,
            &ids,
            &barcodes,
        )
        .await;
        reader.finish().await?;
        let (by_id, by_barcode) = found?;
        Ok(Known { by_id, by_barcode })
    }
}

/// `settings.branch_map`: REGOS stock id → Karvon branch id.
/// `settings.max_response_bytes`, when set.
fn max_response_bytes(settings: &Map<String, Value>) -> Option<usize> {
    settings
        .get("max_response_bytes")
        .and_then(Value::as_u64)
        .and_then(|cap| usize::try_from(cap).ok())
}

fn branch_map(settings: &Map<String, Value>) -> HashMap<i64, String> {
    settings
        .get("branch_map")
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(stock, branch)| {
                    Some((stock.parse().ok()?, branch.as_str()?.to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A cheque's lines: carried by the row, or read from REGOS.
async fn cheque_lines(
    client: &regos::Client,
    cheque: &Cheque,
) -> Result<Result<Vec<ChequeLine>, String>, regos::RegosError> {
    if let Some(lines) = &cheque.lines {
        return Ok(Ok(lines.clone()));
    }
    let rows = client
        .all(
            "chequeitemoperation/get",
            &serde_json::json!({"doc_sale_uuid": cheque.uuid}),
        )
        .await?;
    Ok(rows.iter().map(regos::cheque_line).collect())
}

/// Cheque-line requests in flight at once per job.
const LINE_REQUESTS: usize = 8;

/// The system name of REGOS ids in `external_refs`.
pub const REGOS: &str = "regos";

/// Products known for a chunk's items.
struct Known {
    by_id: HashMap<String, String>,
    by_barcode: HashMap<String, String>,
}

/// The sale a closed cheque is (SPEC §3, REGOS mapping): id
/// `regos:<uuid>`, branch by the stock of its lines, each line's product by
/// REGOS id, else barcode, else `regos:<item id>` (listed as unknown).
fn sale_of(
    cheque: &Cheque,
    lines: &[ChequeLine],
    branch_map: &HashMap<i64, String>,
    known: &Known,
) -> Result<(Id, SaleDetails, Vec<Id>), String> {
    let id = |text: String| Id::parse(text.as_str()).map_err(|error| format!("{text:?}: {error}"));
    let sold: Vec<&ChequeLine> = lines.iter().filter(|line| !line.storno).collect();
    let first = sold.first().ok_or("the cheque has no lines")?;
    let branch = branch_map
        .get(&first.stock_id)
        .cloned()
        .unwrap_or_else(|| format!("regos-stock-{}", first.stock_id));
    let mut unknown = Vec::new();
    let mut sale_lines = Vec::with_capacity(sold.len());
    for line in sold {
        let item = line.item_id.to_string();
        let product = match known.by_id.get(&item).or_else(|| {
            line.barcode
                .as_ref()
                .and_then(|barcode| known.by_barcode.get(barcode))
        }) {
            Some(product) => id(product.clone())?,
            None => {
                let product = id(format!("regos:{item}"))?;
                if !unknown.contains(&product) {
                    unknown.push(product.clone());
                }
                product
            }
        };
        sale_lines.push(SaleLine {
            product_id: product,
            qty: Quantity::parse(line.quantity)
                .map_err(|error| format!("quantity {}: {error}", line.quantity))?,
            unit_price: Money::parse(line.price)
                .map_err(|error| format!("price {}: {error}", line.price))?,
        });
    }
    let payment_type = match cheque.payment.as_deref() {
        None | Some("cash") => PaymentType::Cash,
        Some("card") => PaymentType::Card,
        Some("transfer") => PaymentType::Transfer,
        Some(other) => return Err(format!("payment_type {other:?} is unknown")),
    };
    let details = SaleDetails {
        branch_id: id(branch)?,
        cashier: cheque.cashier.clone(),
        customer_id: None,
        sale_type: if cheque.wholesale {
            SaleType::Wholesale
        } else {
            SaleType::Retail
        },
        payment_type,
        occurred_at: cheque.date,
        lines: sale_lines,
    };
    Ok((id(format!("regos:{}", cheque.uuid))?, details, unknown))
}

/// The UTC instants of a job's window: from the start of `date_from` to
/// the end of `date_to`, local days in `zone` (default yesterday–today).
fn window(
    params: Option<&str>,
    zone: chrono_tz::Tz,
) -> Result<(chrono::DateTime<Utc>, chrono::DateTime<Utc>), String> {
    use chrono::{NaiveDate, TimeZone};
    let params: Value = params
        .map(serde_json::from_str)
        .transpose()
        .map_err(|error| format!("job parameters: {error}"))?
        .unwrap_or(Value::Null);
    let today = Utc::now().with_timezone(&zone).date_naive();
    let date = |key: &str, default: NaiveDate| match params[key].as_str() {
        Some(text) => NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| format!("{key} {text:?} is not a date (YYYY-MM-DD)")),
        None => Ok(default),
    };
    let from = date("date_from", today.pred_opt().unwrap_or(today))?;
    let to = date("date_to", today)?;
    let start = |day: NaiveDate| {
        day.and_hms_opt(0, 0, 0)
            .and_then(|midnight| zone.from_local_datetime(&midnight).earliest())
            .map(|local| local.with_timezone(&Utc))
            .ok_or_else(|| format!("{day} has no start in {zone}"))
    };
    let end = start(to.succ_opt().unwrap_or(to))? - chrono::Duration::seconds(1);
    Ok((start(from)?, end))
}

enum ChunkError {
    OutOfTurn,
    Finished,
    /// The source failed while the chunk was read: the job fails with this.
    Source(String),
    Storage(StorageError),
}

impl From<StorageError> for ChunkError {
    fn from(error: StorageError) -> Self {
        ChunkError::Storage(error)
    }
}

/// Runs a record's command on its loaded stream and counts what it did:
/// a write (created on a `new` stream, else updated), nothing (unchanged),
/// or a refusal (rejected with the aggregate's reason).
async fn tally<A>(
    loaded: &Loaded<A>,
    command: A::Command,
    new: bool,
    reference: &str,
    outcome: &mut ChunkOutcome,
    writes: &mut Vec<StreamWrite>,
) -> Result<(), StorageError>
where
    A: cqrs_es::Aggregate<Services = ()> + Clone,
{
    match loaded.handle(command).await {
        Ok(Some(write)) => {
            if new {
                outcome.created += 1;
            } else {
                outcome.updated += 1;
            }
            writes.push(write);
        }
        Ok(None) => outcome.unchanged += 1,
        Err(CommandError::Domain(error)) => reject(outcome, reference, &error.to_string()),
        Err(CommandError::Storage(error)) => return Err(error),
        Err(other) => return Err(StorageError::EventStore(other.to_string())),
    }
    Ok(())
}

/// The records of a chunk to write, each GUID once (the rest rejected in
/// `outcome` with their reason).
fn admitted<'r, R>(
    records: &'r [Parsed<R>],
    guid: impl Fn(&R) -> &String,
    outcome: &mut ChunkOutcome,
) -> Vec<(Id, &'r R)> {
    let mut wanted = Vec::new();
    let mut seen = HashSet::new();
    for record in records {
        match record {
            Parsed::Rejected { reference, reason } => reject(outcome, reference, reason),
            Parsed::Ok(record) => {
                let guid = guid(record);
                match Id::parse(guid.as_str()) {
                    Err(error) => reject(outcome, guid, &format!("GUID: {error}")),
                    Ok(_) if !seen.insert(guid.clone()) => {
                        reject(outcome, guid, "the GUID appears twice in this import")
                    }
                    Ok(id) => wanted.push((id, record)),
                }
            }
        }
    }
    wanted
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

/// How serde spells a kind or source.
fn spelled(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(text)) => text,
        _ => String::new(),
    }
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

/// Streams an uploaded `import.xml` (+ `offers.xml`) from disk, calling
/// `emit` for each folder and record ([`onec::commerceml::stream`]).
fn stream_commerceml(
    dir: &Path,
    price_type: Option<&str>,
    emit: impl FnMut(onec::commerceml::Item) -> Result<(), SourceError>,
) -> Result<(), String> {
    use std::io::BufReader;
    let open = |name: &str| std::fs::File::open(dir.join(name)).map(BufReader::new);
    let import =
        open("import.xml").map_err(|error| format!("the uploaded import.xml is gone: {error}"))?;
    let offers = open("offers.xml").ok();
    onec::commerceml::stream(import, offers, price_type, emit).map_err(|error| error.to_string())
}

/// The first pass over an upload: it reads as a whole (a malformed file
/// fails here, before any chunk is written), its folders, and how many
/// records it holds. The records are read again chunk by chunk.
fn count_commerceml(
    dir: PathBuf,
    price_type: Option<String>,
    chunk_size: usize,
) -> Result<Fetched, String> {
    let (mut folders, mut total) = (HashMap::new(), 0usize);
    stream_commerceml(&dir, price_type.as_deref(), |item| {
        match item {
            onec::commerceml::Item::Folder((guid, name, _)) => {
                folders.insert(guid, name);
            }
            onec::commerceml::Item::Product(_) => total += 1,
        }
        Ok(())
    })?;
    Ok(Fetched::Upload {
        folders,
        total,
        dir,
        price_type,
        chunk_size,
    })
}

/// An upload's records from `next` on, read by a blocking thread into a
/// channel of about one chunk: memory holds a chunk, not the file.
struct UploadReader {
    records: tokio::sync::mpsc::Receiver<Result<Parsed<ProductRecord>, String>>,
    /// The index of the next record [`Self::take`] answers.
    next: usize,
}

impl UploadReader {
    fn start(dir: PathBuf, price_type: Option<String>, from: usize, buffer: usize) -> Self {
        let (sender, records) = tokio::sync::mpsc::channel(buffer.max(1));
        tokio::task::spawn_blocking(move || {
            let mut seen = 0usize;
            let read = stream_commerceml(&dir, price_type.as_deref(), |item| {
                let onec::commerceml::Item::Product(record) = item else {
                    return Ok(());
                };
                seen += 1;
                if seen <= from {
                    return Ok(());
                }
                // The job stopped reading: stop too.
                sender
                    .blocking_send(Ok(record))
                    .map_err(|_| SourceError::Malformed("no longer read".into()))
            });
            if let Err(message) = read {
                let _ = sender.blocking_send(Err(message));
            }
        });
        Self {
            records,
            next: from,
        }
    }

    /// The next `count` records.
    async fn take(&mut self, count: usize) -> Result<Vec<Parsed<ProductRecord>>, String> {
        let mut taken = Vec::with_capacity(count);
        while taken.len() < count {
            match self.records.recv().await {
                Some(Ok(record)) => taken.push(record),
                Some(Err(message)) => return Err(message),
                None => {
                    return Err(
                        "the upload holds fewer records than counted (changed on disk?)".into(),
                    );
                }
            }
        }
        self.next += count;
        Ok(taken)
    }
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
