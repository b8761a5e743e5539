//! Customers (`customers.customers`) and their purchases
//! (`customers.purchases`): the pure folds `karvon_projections::customers`,
//! the rows' storage declarations, and the queries.

use cqrs_es::Aggregate;
use karvon_domain::customer::Customer;
use karvon_domain::sale::Sale;
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

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[Customer::TYPE, Sale::TYPE])
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
        let customers = super::events_of::<Customer>(events)?
            .into_iter()
            .map(|(event, payload)| {
                let key = vec![
                    text(&event.metadata.tenant_id),
                    text(payload.customer_id().as_str()),
                ];
                (key, (event, payload))
            })
            .collect();
        records::fold(conn, schema, customers, |row, (event, payload)| {
            let at = event.metadata.occurred_at;
            Some(customers::apply_customer(
                row,
                &event.metadata.tenant_id,
                &payload,
                at,
            ))
        })
        .await?;
        let purchases = super::events_of::<Sale>(events)?
            .into_iter()
            .map(|(event, payload)| {
                let sale_id = payload.sale_id().to_string();
                let key = vec![text(&event.metadata.tenant_id), text(&sale_id)];
                (key, (event, payload))
            })
            .collect();
        records::fold(conn, schema, purchases, |row, (event, payload)| {
            customers::apply_purchase(row, &event.metadata.tenant_id, &payload)
        })
        .await?;
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
    records::page(&mut reader.conn(), names::CUSTOMERS, tenant, after, limit).await
}

pub async fn get_customer(
    reader: &mut Reader,
    tenant: &str,
    customer_id: &str,
) -> Result<Option<CustomerRow>, StorageError> {
    let key = vec![text(tenant), text(customer_id)];
    records::get(&mut reader.conn(), names::CUSTOMERS, key).await
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
