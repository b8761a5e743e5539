//! Alerts (`alerts.alerts`): the pure fold `karvon_projections::alerts`,
//! the row's storage declaration, and the queries.

use cqrs_es::Aggregate;
use karvon_domain::alert::{Alert, AlertStatus, Severity};
use karvon_projections::alerts::{self, AlertRow};
use karvon_projections::names;

use crate::StorageError;
use crate::db::Conn;
use crate::feed::FeedEvent;
use crate::records::{self, Reader, Record, Value, record, serde_text_field};
use crate::runner::Projection;

record! {
    AlertRow => "alerts", key(tenant_id, alert_id),
    index alerts_status_idx(tenant_id, status, raised_at),
    {
        tenant_id, alert_id, kind, severity, status, subject, message, raised_at,
        acknowledged_at, resolved_at, occurrences, note,
    }
}

serde_text_field!(AlertStatus, Severity);

fn text(value: &str) -> Value {
    Value::Text(Some(value.to_string()))
}

pub struct AlertsProjection;

#[async_trait::async_trait]
impl Projection for AlertsProjection {
    fn name(&self) -> &'static str {
        names::ALERTS
    }

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[Alert::TYPE])
    }

    fn tables(&self) -> &'static [&'static str] {
        &[AlertRow::TABLE]
    }

    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
        records::create::<AlertRow>(conn, schema).await
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        let items = super::events_of::<Alert>(events)?
            .into_iter()
            .map(|(event, payload)| {
                let key = vec![
                    text(&event.metadata.tenant_id),
                    text(payload.alert_id().as_str()),
                ];
                (key, (event, payload))
            })
            .collect();
        records::fold(conn, schema, items, |row, (event, payload)| {
            alerts::apply(row, &event.metadata.tenant_id, &payload)
        })
        .await
    }
}

/// The tenant's alerts, newest first, optionally of one status and kind.
pub async fn list(
    reader: &mut Reader,
    tenant: &str,
    status: Option<&str>,
    kind: Option<&str>,
    limit: i64,
) -> Result<Vec<AlertRow>, StorageError> {
    let mut conn = reader.conn();
    let backend = conn.backend();
    let statement = format!(
        "SELECT {} FROM {} WHERE tenant_id = $1
            AND ({status} IS NULL OR status = $2) AND ({kind} IS NULL OR kind = $3)
          ORDER BY raised_at DESC, alert_id LIMIT $4",
        AlertRow::column_list(),
        backend.table(names::ALERTS, AlertRow::TABLE),
        status = backend.text_param("$2"),
        kind = backend.text_param("$3"),
    );
    let params = vec![
        text(tenant),
        Value::Text(status.map(str::to_string)),
        Value::Text(kind.map(str::to_string)),
        Value::BigInt(Some(limit)),
    ];
    records::fetch_records(&mut conn, &statement, params).await
}

pub async fn get(
    reader: &mut Reader,
    tenant: &str,
    alert_id: &str,
) -> Result<Option<AlertRow>, StorageError> {
    records::get(
        &mut reader.conn(),
        names::ALERTS,
        vec![text(tenant), text(alert_id)],
    )
    .await
}
