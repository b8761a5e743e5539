//! Background workers: one projection runner per feed consumer. Each holds
//! an advisory lock while active, so any number of instances may run them;
//! only one per consumer works at a time.

use std::sync::Arc;

use karvon_adapters::read_models::catalog::CatalogProjection;
use karvon_adapters::read_models::stock::StockProjection;
use karvon_adapters::runner::{FeedHandler, Runner, RunnerSettings};
use karvon_adapters::store::CommandExecutor;
use karvon_adapters::transfers::TransferProcess;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Config;

pub fn handlers(pool: &PgPool) -> Vec<Arc<dyn FeedHandler>> {
    vec![
        Arc::new(CatalogProjection),
        Arc::new(StockProjection::default()),
        Arc::new(TransferProcess::new(Arc::new(CommandExecutor::new(
            pool.clone(),
        )))),
    ]
}

pub fn spawn(
    pool: &PgPool,
    config: &Config,
    shutdown: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let settings = RunnerSettings {
        batch_size: config.projection_batch_size.max(1),
        ..RunnerSettings::default()
    };
    handlers(pool)
        .into_iter()
        .map(|handler| {
            let runner = Runner::new(pool.clone(), handler, settings.clone());
            tokio::spawn(runner.run(shutdown.clone()))
        })
        .collect()
}
