//! Suppliers (`procurement.suppliers`) and purchase orders
//! (`procurement.purchase_orders`, each with its lines, receipts and
//! performance figures): the pure folds `karvon_projections::procurement`,
//! the rows' storage declarations, and the queries behind the supplier,
//! purchase-order and supplier-performance endpoints.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use karvon_domain::purchase_order::PurchaseOrder;
use karvon_domain::supplier::Supplier;
use karvon_projections::names;
use karvon_projections::procurement::{
    self, OrderFigures, OrderSummary, PurchaseOrderRow, SupplierRow,
};

use crate::StorageError;
use crate::db::Conn;
use crate::feed::FeedEvent;
use crate::records::{self, Reader, Record, Value, record};
use crate::runner::Projection;

record! {
    SupplierRow => "suppliers", key(tenant_id, supplier_id),
    {
        tenant_id, supplier_id, name, phone, email, tax_id, address, created_at, updated_at,
    }
}

record! {
    PurchaseOrderRow => "purchase_orders", key(tenant_id, po_id),
    index purchase_orders_ordered_idx(tenant_id, ordered_at),
    index purchase_orders_supplier_idx(tenant_id, supplier_id, ordered_at),
    {
        tenant_id, po_id, supplier_id, status, ordered_at, expected_at, first_receipt_at,
        lines, line_count, on_time_lines, in_full_lines, otif_lines, ordered_qty, filled_qty,
        received_qty, rejected_qty, received_value, price_difference, ordered_value_accepted,
        complete, updated_at,
    }
}

fn text(value: &str) -> Value {
    Value::Text(Some(value.to_string()))
}

fn optional(value: Option<&str>) -> Value {
    Value::Text(value.map(str::to_string))
}

pub struct ProcurementProjection;

#[async_trait::async_trait]
impl Projection for ProcurementProjection {
    fn name(&self) -> &'static str {
        names::PROCUREMENT
    }

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[Supplier::TYPE, PurchaseOrder::TYPE])
    }

    fn tables(&self) -> &'static [&'static str] {
        &[SupplierRow::TABLE, PurchaseOrderRow::TABLE]
    }

    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
        records::create::<SupplierRow>(conn, schema).await?;
        records::create::<PurchaseOrderRow>(conn, schema).await
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        let suppliers = super::events_of::<Supplier>(events)?
            .into_iter()
            .map(|(event, payload)| {
                let tenant = &event.metadata.tenant_id;
                let key = vec![text(tenant), text(payload.supplier_id().as_str())];
                (key, (event, payload))
            })
            .collect();
        records::fold(conn, schema, suppliers, |row, (event, payload)| {
            let tenant = &event.metadata.tenant_id;
            let at = event.metadata.occurred_at;
            Some(procurement::apply_supplier(row, tenant, &payload, at))
        })
        .await?;
        let orders = super::events_of::<PurchaseOrder>(events)?
            .into_iter()
            .map(|(event, payload)| {
                let tenant = &event.metadata.tenant_id;
                let key = vec![text(tenant), text(payload.po_id().as_str())];
                (key, (event, payload))
            })
            .collect();
        records::fold(conn, schema, orders, |row, (event, payload)| {
            let tenant = &event.metadata.tenant_id;
            procurement::apply_order(row, tenant, &payload, event.metadata.occurred_at)
        })
        .await
    }
}

/// Suppliers in id order, after `after`, at most `limit`.
pub async fn list_suppliers(
    reader: &mut Reader,
    tenant: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<SupplierRow>, StorageError> {
    records::page(&mut reader.conn(), names::PROCUREMENT, tenant, after, limit).await
}

pub async fn get_supplier(
    reader: &mut Reader,
    tenant: &str,
    supplier_id: &str,
) -> Result<Option<SupplierRow>, StorageError> {
    let key = vec![text(tenant), text(supplier_id)];
    records::get(&mut reader.conn(), names::PROCUREMENT, key).await
}

pub async fn get_order(
    reader: &mut Reader,
    tenant: &str,
    po_id: &str,
) -> Result<Option<PurchaseOrderRow>, StorageError> {
    let key = vec![text(tenant), text(po_id)];
    records::get(&mut reader.conn(), names::PROCUREMENT, key).await
}

/// Which purchase orders a list shows.
#[derive(Debug, Default)]
pub struct OrderFilter<'a> {
    pub supplier_id: Option<&'a str>,
    pub status: Option<&'a str>,
    /// The last PO id of the previous page.
    pub after: Option<&'a str>,
    pub limit: i64,
}

/// Purchase orders in id order.
pub async fn list_orders(
    reader: &mut Reader,
    tenant: &str,
    filter: OrderFilter<'_>,
) -> Result<Vec<PurchaseOrderRow>, StorageError> {
    let mut conn = reader.conn();
    let backend = conn.backend();
    let statement = format!(
        "SELECT {} FROM {} WHERE tenant_id = $1
            AND ({} IS NULL OR supplier_id = $2)
            AND ({} IS NULL OR status = $3)
            AND ({} IS NULL OR po_id > $4)
          ORDER BY po_id LIMIT $5",
        PurchaseOrderRow::column_list(),
        backend.table(names::PROCUREMENT, PurchaseOrderRow::TABLE),
        backend.text_param("$2"),
        backend.text_param("$3"),
        backend.text_param("$4"),
    );
    let params = vec![
        text(tenant),
        optional(filter.supplier_id),
        optional(filter.status),
        optional(filter.after),
        Value::BigInt(Some(filter.limit)),
    ];
    records::fetch_records(&mut conn, &statement, params).await
}

/// The purchase orders not cancelled whose `ordered_at` is in
/// `[from, to)`, of one supplier or all, as supplier performance needs them.
pub async fn order_summaries(
    reader: &mut Reader,
    tenant: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    supplier_id: Option<&str>,
) -> Result<Vec<OrderSummary>, StorageError> {
    let mut conn = reader.conn();
    let backend = conn.backend();
    let statement = format!(
        "SELECT supplier_id, status, ordered_at, expected_at, first_receipt_at, line_count,
                on_time_lines, in_full_lines, otif_lines, ordered_qty, filled_qty, received_qty,
                rejected_qty, received_value, price_difference, ordered_value_accepted, complete
           FROM {} WHERE tenant_id = $1 AND ordered_at >= $2 AND ordered_at < $3
            AND status <> 'cancelled' AND ({} IS NULL OR supplier_id = $4)",
        backend.table(names::PROCUREMENT, PurchaseOrderRow::TABLE),
        backend.text_param("$4"),
    );
    let params = vec![
        text(tenant),
        Value::Time(Some(from)),
        Value::Time(Some(to)),
        optional(supplier_id),
    ];
    records::fetch(&mut conn, &statement, params, |row| {
        Ok(OrderSummary {
            supplier_id: row.text("supplier_id")?,
            status: row.text("status")?,
            ordered_at: row.time("ordered_at")?,
            expected_at: row.time("expected_at")?,
            first_receipt_at: row.opt_time("first_receipt_at")?,
            figures: OrderFigures {
                line_count: row.int("line_count")?,
                on_time_lines: row.int("on_time_lines")?,
                in_full_lines: row.int("in_full_lines")?,
                otif_lines: row.int("otif_lines")?,
                ordered_qty: row.decimal("ordered_qty")?,
                filled_qty: row.decimal("filled_qty")?,
                received_qty: row.decimal("received_qty")?,
                rejected_qty: row.decimal("rejected_qty")?,
                received_value: row.decimal("received_value")?,
                price_difference: row.decimal("price_difference")?,
                ordered_value_accepted: row.decimal("ordered_value_accepted")?,
                complete: row.flag("complete")?,
            },
        })
    })
    .await
}

/// The suppliers among `ids` that are registered.
pub async fn suppliers(
    reader: &mut Reader,
    tenant: &str,
    ids: &[&str],
) -> Result<Vec<SupplierRow>, StorageError> {
    let keys = ids.iter().map(|id| vec![text(tenant), text(id)]).collect();
    records::load(&mut reader.conn(), names::PROCUREMENT, keys).await
}
