//! The one list of feed consumers. Workers, preparation at start, the CLI
//! (`projections rebuild|status`) and the admin routes all read it here.

use std::sync::Arc;

use crate::read_models::catalog::CatalogProjection;
use crate::read_models::customers::CustomersProjection;
use crate::read_models::procurement::ProcurementProjection;
use crate::read_models::sales::SalesProjection;
use crate::read_models::stock::StockProjection;
use crate::receipts_stock::ReceiptsStock;
use crate::runner::Consumer;
use crate::sales_stock::SalesStock;
use crate::transfers::TransferProcess;

/// Every feed consumer Karvon runs, each a fresh instance (a projection
/// may cache state between its own steps, so a rebuild takes its own).
pub fn consumers() -> Vec<Consumer> {
    vec![
        Consumer::Projection(Arc::new(CatalogProjection)),
        Consumer::Projection(Arc::new(StockProjection::default())),
        Consumer::Projection(Arc::new(SalesProjection)),
        Consumer::Projection(Arc::new(CustomersProjection)),
        Consumer::Projection(Arc::new(ProcurementProjection)),
        Consumer::Reactor(Arc::new(TransferProcess)),
        Consumer::Reactor(Arc::new(SalesStock)),
        Consumer::Reactor(Arc::new(ReceiptsStock)),
    ]
}

/// The consumer called `name`, as a fresh instance.
pub fn consumer(name: &str) -> Option<Consumer> {
    consumers()
        .into_iter()
        .find(|consumer| consumer.name() == name)
}

/// The names of every consumer, in order.
pub fn names() -> Vec<&'static str> {
    consumers().iter().map(Consumer::name).collect()
}
