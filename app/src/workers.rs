//! Background workers: one runner per feed consumer of the registry. On
//! PostgreSQL each holds an advisory lock while active, so any number of
//! instances may run them; only one per consumer works at a time.

use karvon_adapters::db::Db;
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
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let settings = RunnerSettings {
        batch_size: config.projection_batch_size.max(1),
        ..RunnerSettings::default()
    };
    let mut tasks = vec![tokio::spawn(prune_rate_limits(
        db.clone(),
        shutdown.clone(),
    ))];
    let registry = Registry::new(config.nats_url.as_deref());
    tasks.extend(registry.consumers().into_iter().map(|consumer| {
        let runner =
            Runner::new(db.clone(), consumer, settings.clone()).with_wakeup(wakeup.clone());
        tokio::spawn(runner.run(shutdown.clone()))
    }));
    tasks
}

/// Drops finished rate-limit windows once a minute. Idempotent, so every
/// instance may run it.
async fn prune_rate_limits(db: Db, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            _ = shutdown.changed() => return,
        }
        if let Err(error) = karvon_adapters::auth_store::prune_rate_limits(&db).await {
            tracing::warn!(%error, "pruning rate-limit windows failed");
        }
    }
}
