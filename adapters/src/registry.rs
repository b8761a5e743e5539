//! The one list of feed consumers. Workers, preparation at start, the CLI
//! (`projections rebuild|status`) and the admin routes all read it here.

use std::sync::Arc;

use crate::alert_rules::AlertRules;
use crate::read_models::alerts::AlertsProjection;
use crate::read_models::catalog::CatalogProjection;
use crate::read_models::customers::CustomersProjection;
use crate::read_models::jobs::JobsProjection;
use crate::read_models::meters::MetersProjection;
use crate::read_models::procurement::ProcurementProjection;
use crate::read_models::sales::SalesProjection;
use crate::read_models::stock::StockProjection;
use crate::receipts_stock::ReceiptsStock;
use crate::relay::NatsRelay;
use crate::runner::Consumer;
use crate::sales_stock::SalesStock;
use crate::transfers::TransferProcess;

/// The consumers of one configuration: the read models and reactors
/// always, the NATS relay when a NATS URL is configured.
#[derive(Clone, Default)]
pub struct Registry {
    relay: Option<Arc<NatsRelay>>,
}

impl Registry {
    pub fn new(nats_url: Option<&str>) -> Self {
        Self {
            relay: nats_url.map(|url| Arc::new(NatsRelay::new(url))),
        }
    }

    /// Every feed consumer, each projection a fresh instance (a projection
    /// may cache state between its own steps, so a rebuild takes its own).
    pub fn consumers(&self) -> Vec<Consumer> {
        let mut consumers = vec![
            Consumer::Projection(Arc::new(CatalogProjection)),
            Consumer::Projection(Arc::new(StockProjection::default())),
            Consumer::Projection(Arc::new(SalesProjection)),
            Consumer::Projection(Arc::new(CustomersProjection)),
            Consumer::Projection(Arc::new(ProcurementProjection)),
            Consumer::Projection(Arc::new(JobsProjection)),
            Consumer::Projection(Arc::new(MetersProjection)),
            Consumer::Projection(Arc::new(AlertsProjection)),
            Consumer::Reactor(Arc::new(TransferProcess)),
            Consumer::Reactor(Arc::new(SalesStock)),
            Consumer::Reactor(Arc::new(ReceiptsStock)),
            Consumer::Reactor(Arc::new(AlertRules)),
        ];
        if let Some(relay) = &self.relay {
            consumers.push(Consumer::Publisher(relay.clone()));
        }
        consumers
    }

    /// The consumer called `name`.
    pub fn consumer(&self, name: &str) -> Option<Consumer> {
        self.consumers()
            .into_iter()
            .find(|consumer| consumer.name() == name)
    }

    /// The names of every consumer, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.consumers().iter().map(Consumer::name).collect()
    }
}
