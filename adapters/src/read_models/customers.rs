//! Customers (`customers.customers`) and their purchases
//! (`customers.purchases`): the pure folds `karvon_projections::customers`,
//! the rows' storage declarations, and the queries.

use std::collections::HashMap;

use karvon_domain::customer::Customer;
use karvon_domain::sale::{Sale, SaleEvent};
use karvon_projections::customers::{self, CustomerRow, PurchaseRow};
use karvon_projections::names;

use crate::StorageError;
use crate::db::Conn;
use crate::feed::FeedEvent;

use crate::records::{self, Reader, Record, Value, record};
use crate::runner::Projection;

record! {
    CustomerRow => "customers", key(tenant_id, customer_id),
    {
        tenant_id, customer_id, name, phone, email, tax_id, address, created_at, updated_at,
    }
}

record! {
    PurchaseRow => "purchases", key(tenant_id, sale_id),
    index purchases_customer_idx(tenant_id, customer_id, at),
    { tenant_id, sale_id, customer_id, at, branch_id, total, refunded_amount, lines }
}

fn text(value: &str) -> Value {
    Value::Text(Some(value.to_string()))
}

pub struct CustomersProjection;

#[async_trait::async_trait]
impl Projection for CustomersProjection {
    fn name(&self) -> &'static str {
        names::CUSTOMERS
    }

    fn tables(&self) -> &'static [&'static str] {
        &[CustomerRow::TABLE, PurchaseRow::TABLE]
    }

    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
        records::create::<CustomerRow>(conn, schema).await?;
        records::create::<PurchaseRow>(conn, schema).await
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        let customer_events = super::events_of::<Customer>(events)?;
        if !customer_events.is_empty() {
            let keys = customer_events
                .iter()
                .map(|(event, payload)| {
                    vec![
                        text(&event.metadata.tenant_id),
                        text(payload.customer_id().as_str()),
                    ]
                })
                .collect();
            let mut rows: HashMap<(String, String), CustomerRow> =
                records::load::<CustomerRow>(conn, schema, keys)
                    .await?
                    .into_iter()
                    .map(|row| ((row.tenant_id.clone(), row.customer_id.clone()), row))
                    .collect();
            for (event, payload) in &customer_events {
                let tenant = &event.metadata.tenant_id;
                let key = (tenant.clone(), payload.customer_id().to_string());
                let current = rows.remove(&key);
                let at = event.metadata.occurred_at;
                rows.insert(key, customers::apply_customer(current, tenant, payload, at));
            }
            let rows: Vec<CustomerRow> = rows.into_values().collect();
            records::upsert(conn, schema, &rows).await?;
        }

        let sale_events = super::events_of::<Sale>(events)?;
        if !sale_events.is_empty() {
            let sale_id = |payload: &SaleEvent| match payload {
                SaleEvent::SaleRecorded { sale_id, .. }
                | SaleEvent::SaleRefunded { sale_id, .. } => sale_id.to_string(),
            };
            let keys = sale_events
                .iter()
                .map(|(event, payload)| {
                    vec![text(&event.metadata.tenant_id), text(&sale_id(payload))]
                })
                .collect();
            let mut rows: HashMap<(String, String), PurchaseRow> =
                records::load::<PurchaseRow>(conn, schema, keys)
                    .await?
                    .into_iter()
                    .map(|row| ((row.tenant_id.clone(), row.sale_id.clone()), row))
                    .collect();
            for (event, payload) in &sale_events {
                let tenant = &event.metadata.tenant_id;
                let key = (tenant.clone(), sale_id(payload));
                let current = rows.remove(&key);
                if let Some(row) = customers::apply_purchase(current, tenant, payload) {
                    rows.insert(key, row);
                }
            }
            let rows: Vec<PurchaseRow> = rows.into_values().collect();
            records::upsert(conn, schema, &rows).await?;
        }
        Ok(())
    }
}

/// Customers in id order, after `after`, at most `limit`.
pub async fn list_customers(
    reader: &mut Reader,
    tenant: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<CustomerRow>, StorageError> {
    let mut conn = reader.conn();
    let statement = format!(
        "SELECT {} FROM {} WHERE tenant_id = $1 AND ({} IS NULL OR customer_id > $2)
          ORDER BY customer_id LIMIT $3",
        CustomerRow::column_list(),
        conn.backend().table(names::CUSTOMERS, CustomerRow::TABLE),
        conn.backend().text_param("$2"),
    );
    let params = vec![
        text(tenant),
        Value::Text(after.map(str::to_string)),
        Value::BigInt(Some(limit)),
    ];
    records::fetch_records(&mut conn, &statement, params).await
}

pub async fn get_customer(
    reader: &mut Reader,
    tenant: &str,
    customer_id: &str,
) -> Result<Option<CustomerRow>, StorageError> {
    let mut conn = reader.conn();
    let statement = format!(
        "SELECT {} FROM {} WHERE tenant_id = $1 AND customer_id = $2",
        CustomerRow::column_list(),
        conn.backend().table(names::CUSTOMERS, CustomerRow::TABLE),
    );
    let params = vec![text(tenant), text(customer_id)];
    Ok(records::fetch_records(&mut conn, &statement, params)
        .await?
        .pop())
}

/// The customer's purchases, newest first.
pub async fn purchases(
    reader: &mut Reader,
    tenant: &str,
    customer_id: &str,
) -> Result<Vec<PurchaseRow>, StorageError> {
    let mut conn = reader.conn();
    let statement = format!(
        "SELECT {} FROM {} WHERE tenant_id = $1 AND customer_id = $2 ORDER BY at DESC, sale_id",
        PurchaseRow::column_list(),
        conn.backend().table(names::CUSTOMERS, PurchaseRow::TABLE),
    );
    let params = vec![text(tenant), text(customer_id)];
    records::fetch_records(&mut conn, &statement, params).await
}
