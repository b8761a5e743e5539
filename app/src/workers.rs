//! Background workers: one runner per feed consumer of the registry, and
//! the import-job worker (`karvon_adapters::imports`), the MQTT meter
//! listeners (`karvon_adapters::mqtt`). On
//! PostgreSQL each holds an advisory lock while active, so any number of
//! instances may run them; only one per consumer works at a time. Beside
//! them, [`housekeeping`] prunes expired bookkeeping rows once a minute,
//! and [`stock_sweep`] checks expiring stock once an hour.

use std::sync::Arc;
use std::time::Duration;

use karvon_adapters::db::Db;
use karvon_adapters::imports::Imports;
use karvon_adapters::integrations;
use karvon_adapters::registry::Registry;
use karvon_adapters::runner::{Runner, RunnerSettings, Wakeup};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Config;

/// One runner per registered consumer, all woken by the process's one
/// listener.
pub fn spawn(
    db: &Db,
    config: &Config,
    wakeup: &Wakeup,
    imports: &Arc<Imports>,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let settings = RunnerSettings {
        batch_size: config.projection_batch_size.max(1),
        ..RunnerSettings::default()
    };
    let mut tasks = vec![tokio::spawn(housekeeping(
        db.clone(),
        delivery_retention(config),
        shutdown.clone(),
    ))];
    tasks.push(tokio::spawn(stock_sweep(db.clone(), shutdown.clone())));
    tasks.push(tokio::spawn(imports.clone().run_worker(shutdown.clone())));
    tasks.push(tokio::spawn(karvon_adapters::mqtt::run(
        db.clone(),
        Arc::new(karvon_adapters::store::CommandExecutor::new(db.clone())),
        imports.secrets_key(),
        shutdown.clone(),
    )));
    let registry = Registry::new(config.nats_url.as_deref());
    tasks.extend(registry.consumers().into_iter().map(|consumer| {
        let runner =
            Runner::new(db.clone(), consumer, settings.clone()).with_wakeup(wakeup.clone());
        tokio::spawn(runner.run(shutdown.clone()))
    }));
    tasks
}

/// How long applied webhook ids are kept: the configured hours, at least
/// one (and at most ten years).
///
/// Why forgetting them is safe: a signed delivery is only accepted while
/// its `webhook-timestamp` is within 5 minutes of now, either way
/// (`integrations::TIMESTAMP_TOLERANCE_SECS`), so a replay of an id
/// recorded more than 10 minutes ago (a timestamp up to 5 minutes ahead,
/// plus 5 minutes of tolerance) is refused as stale before its id is even
/// looked up. A Bearer-key delivery carries no timestamp, but its command
/// runs under the idempotency key `webhook:<integration>:<webhook-id>`,
/// which the idempotency log keeps: repeated after the id is pruned, it
/// answers as the first time and appends nothing. The retention only
/// bounds how long a redelivery is acknowledged with
/// `{"duplicate": true}` rather than that replayed answer.
pub fn delivery_retention(config: &Config) -> Duration {
    Duration::from_secs(
        config
            .webhook_delivery_retention_hours
            .clamp(1, 10 * 366 * 24)
            * 3600,
    )
}

/// Shortly after start, then once an hour: opens and clears the `expired`
/// and `near_expiry` alerts as days pass
/// (`karvon_adapters::stock_alerts::StockAlerts::sweep`). The checks are
/// idempotent, so every instance may run it.
async fn stock_sweep(db: Db, mut shutdown: watch::Receiver<bool>) {
    let alerts = karvon_adapters::stock_alerts::StockAlerts::new(
        &db,
        Arc::new(karvon_adapters::store::CommandExecutor::new(db.clone())),
        Arc::new(karvon_adapters::store::CommandExecutor::new(db.clone())),
    );
    let mut wait = Duration::from_secs(10);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        wait = Duration::from_secs(3600);
        match alerts.sweep().await {
            Ok(checked) => tracing::debug!(checked, "stock sweep done"),
            Err(error) => tracing::warn!(%error, "stock sweep failed"),
        }
    }
}

/// Once a minute: drops finished rate-limit windows and webhook ids older
/// than `delivery_retention`. Idempotent, so every instance may run it.
async fn housekeeping(db: Db, delivery_retention: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(error) = karvon_adapters::auth_store::prune_rate_limits(&db).await {
            tracing::warn!(%error, "pruning rate-limit windows failed");
        }
        match integrations::prune_deliveries(&db, delivery_retention).await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "forgot expired webhook ids"),
            Err(error) => tracing::warn!(%error, "pruning webhook deliveries failed"),
        }
    }
}
