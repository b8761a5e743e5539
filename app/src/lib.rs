//! The `karvon` binary's library: configuration, wiring, HTTP API, workers
//! and CLI commands. `main.rs` only parses arguments and calls in here, so
//! tests can start the very same application on a random port.

pub mod auth;
pub mod config;
pub mod http;
pub mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use karvon_adapters::db::Db;
use karvon_adapters::imports::Imports;
use karvon_adapters::integrations::SecretsKey;
use karvon_adapters::registry::Registry;
use karvon_adapters::runner::{self, Projection, RebuildReport};
use karvon_adapters::store::CommandExecutor;
use karvon_projections::{Position, names};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::Config;

/// Turns transparent huge pages off for this process (best effort; call
/// first thing in `main`). mimalloc asks for them on its arenas, and memory
/// it returns and takes again is then faulted in 2 MiB at a time and
/// zeroed whole: about a tenth of the MQTT ingest's CPU time went to
/// clearing pages, and readings/s rose by about as much without them.
pub fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
}

/// Which parts of Karvon this instance runs (`karvon serve --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// HTTP API and workers.
    All,
    /// Stateless HTTP API only.
    Api,
    /// Projection runners and process managers only.
    Workers,
}

/// A built, bound, not-yet-running Karvon.
pub struct Application {
    listener: Option<TcpListener>,
    router: axum::Router,
    db: Db,
    config: Config,
    role: Role,
    /// The process's one listener for appends and checkpoint moves, shared
    /// by the workers and the read-your-writes waits.
    wakeup: runner::Wakeup,
    /// Ends that listener (at shutdown, or when the application is dropped).
    wakeup_stop: watch::Sender<bool>,
    /// Import jobs: started by the API, run by the workers.
    imports: Arc<Imports>,
    /// The live event streams (ended at shutdown).
    streams: Arc<http::StreamHub>,
}

impl Application {
    /// Connects (creating the database if needed), migrates unless told not
    /// to, and binds the listener.
    pub async fn build(config: Config, role: Role) -> anyhow::Result<Self> {
        if let Some(secret) = &config.jwt_secret {
            anyhow::ensure!(
                secret.len() >= 32,
                "KARVON_JWT_SECRET must be at least 32 bytes (it has {}); \
                 generate one with `openssl rand -hex 32`",
                secret.len()
            );
        }
        let secrets_key = secrets_key(&config)?;
        let db = open_store(&config).await?;
        if config.run_migrations {
            db.migrate().await.context("applying migrations")?;
        }
        let registry = Registry::new(config.nats_url.as_deref());
        runner::session::prepare_all(&db, &registry.consumers())
            .await
            .context("preparing the feed consumers")?;
        let (wakeup_stop, wakeup_stopped) = watch::channel(false);
        let wakeup = runner::Wakeup::start(&db, wakeup_stopped);
        let products = Arc::new(CommandExecutor::new(db.clone()));
        let customers = Arc::new(CommandExecutor::new(db.clone()));
        let sales = Arc::new(CommandExecutor::new(db.clone()));
        let imports = Arc::new(Imports::new(
            db.clone(),
            products.clone(),
            customers.clone(),
            sales.clone(),
            secrets_key.clone(),
        ));
        // Streams hold their connection: at most half of them.
        let streams = http::StreamHub::start(
            db.clone(),
            config.max_connections.max(2) / 2,
            Duration::from_secs(config.stream_lifetime_secs.max(1)),
        );
        let state = http::AppState {
            db: db.clone(),
            wakeup: wakeup.clone(),
            products,
            stock: Arc::new(CommandExecutor::new(db.clone())),
            sales,
            customers,
            suppliers: Arc::new(CommandExecutor::new(db.clone())),
            purchase_orders: Arc::new(CommandExecutor::new(db.clone())),
            // A meter's state is a few kilobytes (its remembered
            // readings): at most 20,000 kept warm.
            meters: Arc::new(CommandExecutor::new(db.clone()).with_warm_limit(20_000)),
            alerts: Arc::new(CommandExecutor::new(db.clone())),
            metrics: metrics_handle(),
            min_position_wait: Duration::from_millis(config.min_position_wait_ms),
            known_products: Arc::default(),
            auth: Arc::new(auth::Authenticator::new(
                db.clone(),
                db.bookkeeping(&config.database_url, config.db_max_connections)
                    .await
                    .context("connecting the bookkeeping pool")?,
                config.jwt_secret.as_deref(),
                config.tenant_rate_limit,
            )),
            rebuild_batch_size: config.rebuild_batch_size.max(1),
            consumer_figures_at: Arc::default(),
            secrets_key,
            registry,
            imports: imports.clone(),
            uploads_dir: {
                let dir = uploads_dir(&config);
                private_dir(&dir)?;
                dir
            },
            trusted_proxies: Arc::new(config.trusted_proxy_ranges()?),
            streams: streams.clone(),
        };
        let settings = http::HttpSettings {
            max_upload_bytes: config.max_upload_bytes,
            max_body_bytes: config.max_body_bytes,
            request_timeout: Duration::from_secs(config.request_timeout_secs),
        };
        let router = http::router(state, &settings);
        let listener = if role == Role::Workers {
            None
        } else {
            let listener = TcpListener::bind(&config.listen)
                .await
                .with_context(|| format!("binding {}", config.listen))?;
            Some(listener)
        };
        Ok(Self {
            listener,
            router,
            db,
            config,
            role,
            wakeup,
            wakeup_stop,
            imports,
            streams,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Serves until `shutdown` completes, then stops taking requests, lets
    /// workers finish the batch in hand, and returns.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let workers = if self.role == Role::Api {
            Vec::new()
        } else {
            workers::spawn(
                &self.db,
                &self.config,
                &self.wakeup,
                &self.imports,
                stop_rx.clone(),
            )
        };
        tracing::info!(
            role = ?self.role,
            listen = ?self.local_addr(),
            backend = self.db.backend().name(),
            database = %config::redact_url(&self.config.database_url),
            nats = if self.config.nats_url.is_some() { "on (every event to JetStream)" } else { "off" },
            mqtt = "per acrel integration (settings.mqtt_url)",
            "karvon started"
        );
        let http_stop = stop_rx.clone();
        let limits = ServeLimits {
            max_connections: self.config.max_connections.max(1),
            header_read_timeout: Duration::from_millis(self.config.header_read_timeout_ms.max(1)),
        };
        let http = async move {
            match self.listener {
                Some(listener) => serve(listener, self.router, limits, http_stop)
                    .await
                    .context("serving HTTP"),
                None => {
                    let mut http_stop = http_stop;
                    let _ = http_stop.wait_for(|stop| *stop).await;
                    Ok(())
                }
            }
        };
        let http = tokio::spawn(http);
        shutdown.await;
        tracing::info!("shutting down: finishing requests and batches in hand");
        let _ = stop_tx.send(true);
        // Event streams never finish by themselves: end them, so the
        // graceful shutdown does not wait for their lifetime.
        self.streams.close();
        for worker in workers {
            let _ = worker.await;
        }
        http.await.context("HTTP task")??;
        let _ = self.wakeup_stop.send(true);
        self.db.close().await;
        Ok(())
    }
}

/// The key sealing integration secrets: `KARVON_SECRETS_KEY`, else on
/// SQLite `secrets.key` beside the database file (created on first start,
/// mode 0600, reused after), else none: on PostgreSQL several instances
/// must share one key, so none is invented and integrations with secrets
/// are refused until one is configured.
fn secrets_key(config: &Config) -> anyhow::Result<Option<SecretsKey>> {
    if let Some(text) = &config.secrets_key {
        return SecretsKey::parse(text)
            .map(Some)
            .map_err(|why| anyhow::anyhow!("KARVON_SECRETS_KEY {why}"));
    }
    let url = &config.database_url;
    let Some(file) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        tracing::warn!(
            "KARVON_SECRETS_KEY is not set: integrations with secrets will be refused \
             (generate one with `openssl rand -hex 32`)"
        );
        return Ok(None);
    };
    let file = file.split('?').next().unwrap_or_default();
    if file.is_empty() || file.contains(":memory:") {
        return Ok(Some(SecretsKey::generate()));
    }
    let path = std::path::Path::new(file).with_file_name("secrets.key");
    SecretsKey::load_or_create(&path)
        .map(Some)
        .map_err(|why| anyhow::anyhow!("integration secrets key: {why}"))
}

/// Where uploads wait for their job: `KARVON_UPLOADS_DIR`, else `uploads/`
/// beside a SQLite database, else a directory in the system's temp dir.
fn uploads_dir(config: &Config) -> std::path::PathBuf {
    if let Some(dir) = &config.uploads_dir {
        return dir.into();
    }
    let url = &config.database_url;
    let file = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|file| file.split('?').next().unwrap_or_default())
        .filter(|file| !file.is_empty() && !file.contains(":memory:"));
    match file {
        Some(file) => std::path::Path::new(file).with_file_name("uploads"),
        None => std::path::Path::new("karvon-data").join("uploads"),
    }
}

/// Makes `dir` (and its parents) with `dir` itself private to the
/// process's user (0700), also when it already existed wider.
fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    Ok(())
}

/// What the listener allows one instance.
#[derive(Debug, Clone, Copy)]
struct ServeLimits {
    /// Connections served at once; the next one is accepted when one closes.
    max_connections: usize,
    /// Time a connection has to send complete request headers, from when
    /// it opened or its previous answer was written.
    header_read_timeout: Duration,
}

/// Serves HTTP/1.1 (what `axum::serve` served with our features) on
/// `listener` until `stop`, then stops accepting and waits for the
/// requests in hand. Unlike `axum::serve` it closes connections that are
/// slow to send their headers and holds at most `max_connections`: a
/// connection beyond that stays in the kernel's backlog, unaccepted,
/// until one closes. Handlers still read `ConnectInfo<SocketAddr>`.
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: ServeLimits,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tower::Service;

    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut make_service = router.into_make_service_with_connect_info::<SocketAddr>();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.context("connection slots closed")?,
            () = stopped(&mut stop) => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => break,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: the listener is
                // fine, try again shortly (as axum::serve does).
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = match make_service.call(remote).await {
            Ok(service) => service,
            Err(never) => match never {},
        };
        let connection =
            builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %remote, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn open_store(config: &Config) -> anyhow::Result<Db> {
    Db::open(&config.database_url, config.db_max_connections)
        .await
        .with_context(|| {
            format!(
                "opening the store at {}",
                config::redact_url(&config.database_url)
            )
        })
}

/// Opens the store and applies the migrations (the CLI commands).
async fn open_migrated(config: &Config) -> anyhow::Result<Db> {
    let db = open_store(config).await?;
    db.migrate().await.context("applying migrations")?;
    Ok(db)
}

/// `karvon migrate`.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    open_migrated(config).await?;
    Ok(())
}

/// `karvon projections rebuild <name>`.
pub async fn rebuild_projection(config: &Config, name: &str) -> anyhow::Result<RebuildReport> {
    let handler = read_model(name).with_context(|| {
        format!(
            "unknown projection {name:?}; known: {}",
            read_models().join(", ")
        )
    })?;
    let db = open_migrated(config).await?;
    runner::rebuild(&db, handler.as_ref(), config.rebuild_batch_size.max(1))
        .await
        .context("rebuilding")
}

/// `karvon tenant set <id> --allow-over-delivery <true|false>`.
pub async fn set_allow_over_delivery(
    config: &Config,
    tenant: &str,
    allow: bool,
) -> anyhow::Result<()> {
    let db = open_migrated(config).await?;
    if !karvon_adapters::auth_store::set_allow_over_delivery(&db, tenant, allow).await? {
        anyhow::bail!("no tenant {tenant:?}");
    }
    Ok(())
}

/// `karvon tenant create <id> [--time-zone <IANA>]`; `false` when the
/// tenant already existed.
pub async fn create_tenant(config: &Config, tenant: &str, time_zone: &str) -> anyhow::Result<bool> {
    let tenant = karvon_domain::TenantId::parse(tenant)
        .map_err(|error| anyhow::anyhow!("tenant id: {error}"))?;
    time_zone.parse::<chrono_tz::Tz>().map_err(|_| {
        anyhow::anyhow!("{time_zone:?} is not an IANA time zone (e.g. Asia/Tashkent)")
    })?;
    let db = open_migrated(config).await?;
    Ok(karvon_adapters::auth_store::create_tenant(&db, tenant.as_str(), time_zone).await?)
}

/// `karvon api-key create --tenant <id> --scopes read,write [--rate-limit N]`.
pub async fn create_api_key(
    config: &Config,
    tenant: &str,
    scopes: &str,
    rate_limit: Option<i32>,
    name: Option<&str>,
) -> anyhow::Result<auth::CreatedKey> {
    let scopes = auth::parse_scopes(scopes.split(','))?;
    let db = open_migrated(config).await?;
    Ok(auth::create_api_key(&db, tenant, scopes, rate_limit, None, name).await?)
}

/// `karvon user create --tenant <id> --username <name>`.
pub async fn create_user(
    config: &Config,
    tenant: &str,
    username: &str,
    password: &str,
    scopes: &str,
) -> anyhow::Result<()> {
    let scopes = auth::parse_scopes(scopes.split(','))?;
    let db = open_migrated(config).await?;
    Ok(auth::create_user(&db, tenant, username, password, scopes).await?)
}

/// `karvon projections status`.
pub async fn projection_status(config: &Config) -> anyhow::Result<Vec<runner::ConsumerStatus>> {
    let db = open_store(config).await?;
    Ok(runner::status(&db, &registry(config).consumers()).await?)
}

/// `karvon projections retry <name>`.
pub async fn retry_consumer(config: &Config, name: &str) -> anyhow::Result<()> {
    let consumer = consumer(config, name)?;
    let db = open_migrated(config).await?;
    anyhow::ensure!(
        runner::checkpoint::retry(&db, consumer.name()).await?,
        "{name} is not stopped on an event"
    );
    Ok(())
}

/// `karvon projections skip <name>`.
pub async fn skip_event(config: &Config, name: &str) -> anyhow::Result<runner::SkippedEvent> {
    let consumer = consumer(config, name)?;
    let db = open_migrated(config).await?;
    match runner::checkpoint::skip(&db, consumer.name(), consumer.aggregate_types(), "cli").await? {
        runner::SkipOutcome::Skipped(skipped) => Ok(skipped),
        runner::SkipOutcome::NotFailed => anyhow::bail!("{name} is not stopped on an event"),
    }
}

/// `karvon events export --tenant T [--from] [--to]`: NDJSON of
/// CloudEvents on standard output; answers how many.
pub async fn export_events(
    config: &Config,
    tenant: &str,
    from: Option<chrono::DateTime<chrono::Utc>>,
    to: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<u64> {
    use std::io::Write;
    let db = open_store(config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = karvon_adapters::audit::export(&db, tenant, from, to, |event| {
        serde_json::to_writer(&mut out, &karvon_adapters::relay::cloud_event(event))?;
        out.write_all(b"\n")
    })
    .await?;
    out.flush()?;
    Ok(written)
}

/// `karvon events verify`.
pub async fn verify_events(
    config: &Config,
) -> anyhow::Result<karvon_adapters::audit::Verification> {
    let db = open_store(config).await?;
    Ok(karvon_adapters::audit::verify(&db).await?)
}

/// `karvon relay republish --from <position|start>`: moves the relay's
/// checkpoint to just before `from`; answers where it now stands.
pub async fn republish(config: &Config, from: &str) -> anyhow::Result<Position> {
    let to = if from == "start" {
        Position::START
    } else {
        let position: Position = from
            .parse()
            .map_err(|_| anyhow::anyhow!("--from: expected <transaction>.<global> or start"))?;
        Position::new(
            position.transaction_id,
            position.global_position.saturating_sub(1).max(0),
        )
    };
    let db = open_migrated(config).await?;
    anyhow::ensure!(
        runner::checkpoint::rewind(&db, names::NATS_RELAY, to).await?,
        "the relay has not run yet (set KARVON_NATS_URL and start the server once)"
    );
    Ok(to)
}

/// The consumers `config` runs (the NATS relay when a NATS URL is set).
fn registry(config: &Config) -> Registry {
    Registry::new(config.nats_url.as_deref())
}

/// The consumer called `name`, or an error naming the known ones.
fn consumer(config: &Config, name: &str) -> anyhow::Result<runner::Consumer> {
    let registry = registry(config);
    registry.consumer(name).with_context(|| {
        format!(
            "unknown feed consumer {name:?}; known: {}",
            registry.names().join(", ")
        )
    })
}

/// The read models that can be rebuilt, by name.
pub fn read_models() -> Vec<&'static str> {
    Registry::default()
        .consumers()
        .iter()
        .filter(|consumer| consumer.projection().is_some())
        .map(|consumer| consumer.name())
        .collect()
}

/// A fresh instance of the read model called `name`.
pub fn read_model(name: &str) -> Option<Arc<dyn Projection>> {
    Registry::default()
        .consumer(name)
        .and_then(|consumer| consumer.projection().cloned())
}

/// The process-wide Prometheus recorder (installed once, shared by every
/// application built in this process).
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok().map(|()| handle)
        })
        .clone()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
