//! Meters (`meters.meters`) and their readings (`meters.readings`): the
//! pure folds `karvon_projections::meters`, the rows' storage
//! declarations, and the queries.

use chrono::{DateTime, Utc};
use karvon_domain::meter::Meter;
use karvon_projections::meters::{self, MeterRow, ReadingRow};
use karvon_projections::names;

use crate::StorageError;
use crate::db::Conn;
use crate::feed::FeedEvent;
use crate::records::{self, Reader, Record, Value, record};
use crate::runner::Projection;

record! {
    MeterRow => "meters", key(tenant_id, meter_id),
    {
        tenant_id, meter_id, station, meter_type, status, last_reading_at, last_reading,
        readings, conflicts,
    }
}

record! {
    ReadingRow => "readings", key(tenant_id, meter_id, at),
    {
        tenant_id, meter_id, at, reading, consumption, voltage, current, power_factor,
        backwards,
    }
}

fn text(value: &str) -> Value {
    Value::Text(Some(value.to_string()))
}

pub struct MetersProjection;

#[async_trait::async_trait]
impl Projection for MetersProjection {
    fn name(&self) -> &'static str {
        names::METERS
    }

    fn tables(&self) -> &'static [&'static str] {
        &[MeterRow::TABLE, ReadingRow::TABLE]
    }

    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
        records::create::<MeterRow>(conn, schema).await?;
        records::create::<ReadingRow>(conn, schema).await
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        let events = super::events_of::<Meter>(events)?;
        if events.is_empty() {
            return Ok(());
        }
        let readings: Vec<ReadingRow> = events
            .iter()
            .filter_map(|(event, payload)| meters::reading_row(&event.metadata.tenant_id, payload))
            .collect();
        let items = events
            .into_iter()
            .map(|(event, payload)| {
                let key = vec![
                    text(&event.metadata.tenant_id),
                    text(payload.meter_id().as_str()),
                ];
                (key, (event, payload))
            })
            .collect();
        records::fold(conn, schema, items, |row, (event, payload)| {
            Some(meters::apply_meter(
                row,
                &event.metadata.tenant_id,
                &payload,
            ))
        })
        .await?;
        // A reading is recorded once per (meter, instant): its row is new.
        records::upsert(conn, schema, &readings).await
    }
}

/// Meters in id order, after `after`, at most `limit`.
pub async fn list_meters(
    reader: &mut Reader,
    tenant: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<MeterRow>, StorageError> {
    records::page(&mut reader.conn(), names::METERS, tenant, after, limit).await
}

pub async fn get_meter(
    reader: &mut Reader,
    tenant: &str,
    meter_id: &str,
) -> Result<Option<MeterRow>, StorageError> {
    records::get(
        &mut reader.conn(),
        names::METERS,
        vec![text(tenant), text(meter_id)],
    )
    .await
}

/// A meter's readings from `from` (inclusive) to `to` (exclusive), oldest
/// first, after the instant `after`, at most `limit`.
pub async fn readings(
    reader: &mut Reader,
    tenant: &str,
    meter_id: &str,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    after: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<ReadingRow>, StorageError> {
    let mut conn = reader.conn();
    let backend = conn.backend();
    let statement = format!(
        "SELECT {} FROM {} WHERE tenant_id = $1 AND meter_id = $2
            AND ($3 IS NULL OR at >= $3) AND ($4 IS NULL OR at < $4) AND ($5 IS NULL OR at > $5)
          ORDER BY at LIMIT $6",
        ReadingRow::column_list(),
        backend.table(names::METERS, ReadingRow::TABLE),
    );
    let params = vec![
        text(tenant),
        text(meter_id),
        Value::Time(from),
        Value::Time(to),
        Value::Time(after),
        Value::BigInt(Some(limit)),
    ];
    records::fetch_records(&mut conn, &statement, params).await
}
