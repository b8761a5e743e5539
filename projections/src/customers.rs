//! Customers and their purchases: one row per customer, one per sale that
//! names a customer (with what was refunded of it since).

use chrono::{DateTime, Utc};
use karvon_domain::customer::CustomerEvent;
use karvon_domain::sale::{SaleDetails, SaleEvent};
use rust_decimal::Decimal;

#[derive(Debug, Clone, PartialEq)]
pub struct CustomerRow {
    pub tenant_id: String,
    pub customer_id: String,
    pub name: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub tax_id: Option<String>,
    pub address: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Folds a customer event into the customer's row.
pub fn apply_customer(
    row: Option<CustomerRow>,
    tenant_id: &str,
    event: &CustomerEvent,
    at: DateTime<Utc>,
) -> CustomerRow {
    let details = event.details();
    CustomerRow {
        tenant_id: tenant_id.to_string(),
        customer_id: event.customer_id().to_string(),
        name: details.name.clone(),
        phone: details.phone.clone(),
        email: details.email.clone(),
        tax_id: details.tax_id.clone(),
        address: details.address.clone(),
        created_at: row.as_ref().map_or(at, |row| row.created_at),
        updated_at: at,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PurchaseRow {
    pub tenant_id: String,
    pub sale_id: String,
    pub customer_id: String,
    pub at: DateTime<Utc>,
    pub branch_id: String,
    pub total: Decimal,
    pub refunded_amount: Decimal,
    /// `[{product_id, qty, unit_price}]` as sold.
    pub lines: serde_json::Value,
}

/// Folds a sale event into the purchase it makes or changes: a recorded
/// sale with a customer makes one; a refund adds to the purchase (`row`)
/// when there is one. `None` when the event concerns no customer.
pub fn apply_purchase(
    row: Option<PurchaseRow>,
    tenant_id: &str,
    event: &SaleEvent,
) -> Option<PurchaseRow> {
    match event {
        SaleEvent::SaleRecorded {
            sale_id, details, ..
        } => {
            let customer = details.customer_id.as_ref()?;
            Some(PurchaseRow {
                tenant_id: tenant_id.to_string(),
                sale_id: sale_id.to_string(),
                customer_id: customer.to_string(),
                at: details.occurred_at,
                branch_id: details.branch_id.to_string(),
                total: details.lines.iter().map(|line| line.amount()).sum(),
                refunded_amount: Decimal::ZERO,
                lines: purchase_lines(details),
            })
        }
        SaleEvent::SaleCorrected {
            details,
            is_return: false,
            ..
        } => row.map(|row| PurchaseRow {
            at: details.occurred_at,
            branch_id: details.branch_id.to_string(),
            total: details.lines.iter().map(|line| line.amount()).sum(),
            lines: purchase_lines(details),
            ..row
        }),
        // A till's return document is not linked to a purchase.
        SaleEvent::ReturnRecorded { .. } | SaleEvent::SaleCorrected { .. } => row,
        SaleEvent::SaleRefunded { lines, .. } => row.map(|row| PurchaseRow {
            refunded_amount: row.refunded_amount
                + lines.iter().map(|line| line.amount).sum::<Decimal>(),
            ..row
        }),
    }
}

/// A purchase's lines as answered: `[{product_id, qty, unit_price}]`.
fn purchase_lines(details: &SaleDetails) -> serde_json::Value {
    details
        .lines
        .iter()
        .map(|line| {
            serde_json::json!({
                "product_id": line.product_id,
                "qty": line.qty,
                "unit_price": line.unit_price,
            })
        })
        .collect()
}
