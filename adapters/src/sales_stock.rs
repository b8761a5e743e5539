//! The sales reactor: stock follows sales. Each sold line is deducted from
//! the branch's stock (`warehouse_id = branch_id`, FEFO, past zero if need
//! be: a sale is a fact), each refunded line is returned; the runner keys
//! each command by (reactor, event, line), so a repeat changes nothing.
//!
//! A return reported by a till brings its lines back; a corrected sale
//! undoes its previous lines and applies the new ones.
//!
//! A sale naming a product the catalogue does not know yet is still
//! recorded (the sale lists it in `unknown_products`) and its stock line is
//! applied at once: a stock item does not need a catalogue entry, and
//! inventory levels show the line with empty catalogue fields until the
//! product is registered.

use cqrs_es::Aggregate;
use karvon_domain::ids::stock_stream_id;
use karvon_domain::sale::{Sale, SaleEvent};
use karvon_domain::sale::{SaleDetails, SaleLine};
use karvon_domain::stock::StockCommand;
use karvon_domain::{Id, Quantity, TenantId};
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

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[Sale::TYPE])
    }

    fn react(&self, event: &FeedEvent) -> Result<Vec<Reaction>, StorageError> {
        if event.aggregate_type != Sale::TYPE {
            return Ok(Vec::new());
        }
        let tenant = TenantId::parse(event.metadata.tenant_id.clone())
            .map_err(|error| StorageError::Corrupt(format!("tenant id: {error}")))?;
        let stock = |branch: &Id, product: &Id, command: StockCommand| Reaction::Stock {
            stream: stock_stream_id(&tenant, branch, product),
            command,
            metadata: caused_by(event, names::SALES_STOCK, None),
        };
        let sell = |details: &SaleDetails, sale_id: &Id, line: u32, sold: &SaleLine| {
            stock(
                &details.branch_id,
                &sold.product_id,
                StockCommand::Sell {
                    warehouse_id: details.branch_id.clone(),
                    product_id: sold.product_id.clone(),
                    qty: sold.qty,
                    sale_id: sale_id.clone(),
                    line,
                },
            )
        };
        let give_back = |branch: &Id, sale_id: &Id, line: u32, product: &Id, qty: Quantity| {
            stock(
                branch,
                product,
                StockCommand::Return {
                    warehouse_id: branch.clone(),
                    product_id: product.clone(),
                    qty,
                    sale_id: sale_id.clone(),
                    line,
                },
            )
        };
        // Sold lines leave the branch; returned ones come back.
        let lines = |details: &SaleDetails, sale_id: &Id, outgoing: bool| -> Vec<Reaction> {
            (1u32..)
                .zip(&details.lines)
                .map(|(number, line)| {
                    if outgoing {
                        sell(details, sale_id, number, line)
                    } else {
                        give_back(
                            &details.branch_id,
                            sale_id,
                            number,
                            &line.product_id,
                            line.qty,
                        )
                    }
                })
                .collect()
        };
        Ok(match decode::<SaleEvent>(event)? {
            SaleEvent::SaleRecorded {
                sale_id, details, ..
            } => lines(&details, &sale_id, true),
            SaleEvent::ReturnRecorded {
                sale_id, details, ..
            } => lines(&details, &sale_id, false),
            // Undo what the previous content did, then do the new one.
            SaleEvent::SaleCorrected {
                sale_id,
                is_return,
                previous,
                details,
                ..
            } => {
                let mut reactions = lines(&previous, &sale_id, is_return);
                reactions.extend(lines(&details, &sale_id, !is_return));
                reactions
            }
            SaleEvent::SaleRefunded {
                sale_id,
                branch_id,
                lines,
                ..
            } => lines
                .iter()
                .map(|line| give_back(&branch_id, &sale_id, line.line, &line.product_id, line.qty))
                .collect(),
        })
    }
}
