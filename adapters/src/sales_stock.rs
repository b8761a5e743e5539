//! The sales reactor: stock follows sales. Each sold line is deducted from
//! the branch's stock (`warehouse_id = branch_id`, FEFO, past zero if need
//! be: a sale is a fact), each refunded line is returned; the runner keys
//! each command by (reactor, event, line), so a repeat changes nothing.
//!
//! A sale naming a product the catalogue does not know yet is still
//! recorded (the sale lists it in `unknown_products`) and its stock line is
//! applied at once: a stock item does not need a catalogue entry, and
//! inventory levels show the line with empty catalogue fields until the
//! product is registered.

use cqrs_es::Aggregate;
use karvon_domain::TenantId;
use karvon_domain::ids::stock_stream_id;
use karvon_domain::sale::{Sale, SaleEvent};
use karvon_domain::stock::StockCommand;
use karvon_projections::names;

use crate::StorageError;
use crate::feed::FeedEvent;
use crate::reactions::{Reaction, caused_by};
use crate::read_models::decode;
use crate::runner::Reactor;

pub struct SalesStock;

impl Reactor for SalesStock {
    fn name(&self) -> &'static str {
        names::SALES_STOCK
    }

    fn react(&self, event: &FeedEvent) -> Result<Vec<Reaction>, StorageError> {
        if event.aggregate_type != Sale::TYPE {
            return Ok(Vec::new());
        }
        let tenant = TenantId::parse(event.metadata.tenant_id.clone())
            .map_err(|error| StorageError::Corrupt(format!("tenant id: {error}")))?;
        let stock = |branch, product, command| Reaction::Stock {
            stream: stock_stream_id(&tenant, branch, product),
            command,
            metadata: caused_by(event, names::SALES_STOCK, None),
        };
        Ok(match decode::<SaleEvent>(event)? {
            SaleEvent::SaleRecorded {
                sale_id, details, ..
            } => details
                .lines
                .iter()
                .enumerate()
                .map(|(index, line)| {
                    stock(
                        &details.branch_id,
                        &line.product_id,
                        StockCommand::Sell {
                            warehouse_id: details.branch_id.clone(),
                            product_id: line.product_id.clone(),
                            qty: line.qty,
                            sale_id: sale_id.clone(),
                            line: index as u32 + 1,
                        },
                    )
                })
                .collect(),
            SaleEvent::SaleRefunded {
                sale_id,
                branch_id,
                lines,
                ..
            } => lines
                .iter()
                .map(|line| {
                    stock(
                        &branch_id,
                        &line.product_id,
                        StockCommand::Return {
                            warehouse_id: branch_id.clone(),
                            product_id: line.product_id.clone(),
                            qty: line.qty,
                            sale_id: sale_id.clone(),
                            line: line.line,
                        },
                    )
                })
                .collect(),
        })
    }
}
