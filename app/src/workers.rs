//! Background workers: one projection runner per feed consumer. On
//! PostgreSQL each holds an advisory lock while active, so any number of
//! instances may run them; only one per consumer works at a time.

use std::sync::Arc;

use karvon_adapters::db::Db;
use karvon_adapters::read_models::catalog::CatalogProjection;
use karvon_adapters::read_models::stock::StockProjection;
use karvon_adapters::runner::{FeedHandler, Runner, RunnerSettings};
use karvon_adapters::store::CommandExecutor;
use karvon_adapters::transfers::TransferProcess;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Config;

pub fn handlers(db: &Db) -> Vec<Arc<dyn FeedHandler>> {
    vec![
        Arc::new(CatalogProjection),
        Arc::new(StockProjection::default()),
        Arc::new(TransferProcess::new(Arc::new(CommandExecutor::new(
            db.clone(),
        )))),
    ]
}

pub fn spawn(db: &Db, config: &Config, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    let settings = RunnerSettings {
        batch_size: config.projection_batch_size.max(1),
        ..RunnerSettings::default()
    };
    let mut tasks = vec![tokio::spawn(prune_rate_limits(
        db.clone(),
        shutdown.clone(),
    ))];
    tasks.extend(handlers(db).into_iter().map(|handler| {
        let runner = Runner::new(db.clone(), handler, settings.clone());
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
