//! Meters (`meters.meters`) and their readings (`meters.readings`): the
//! pure folds `karvon_projections::meters`, the rows' storage
//! declarations, and the queries.

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use karvon_domain::meter::Meter;
use karvon_projections::meters::{self, CommandRow, MeterRow, ReadingRow};
use karvon_projections::names;

use crate::StorageError;
use crate::db::Conn;
use crate::feed::FeedEvent;
use crate::records::{self, Reader, Record, Value, record};
use crate::runner::Projection;

record! {
    MeterRow => "meters", key(tenant_id, meter_id),
    {
        tenant_id, meter_id, station, meter_type, integration_id, status, last_reading_at,
        last_heard_at, last_reading, readings, conflicts, silent_since,
    }
}

record! {
    ReadingRow => "readings", key(tenant_id, meter_id, at),
    {
        tenant_id, meter_id, at, reading, consumption, voltage, current, power_factor,
        backwards, anomalous,
    }
}

record! {
    CommandRow => "commands", key(tenant_id, command_id),
    index commands_meter_idx(tenant_id, meter_id, requested_at),
    { tenant_id, command_id, meter_id, action, tariff_id, status, requested_at, updated_at }
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

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[Meter::TYPE])
    }

    fn tables(&self) -> &'static [&'static str] {
        &[MeterRow::TABLE, ReadingRow::TABLE, CommandRow::TABLE]
    }

    async fn create_tables(&self, conn: &mut Conn<'_>, schema: &str) -> Result<(), StorageError> {
        records::create::<MeterRow>(conn, schema).await?;
        records::create::<ReadingRow>(conn, schema).await?;
        records::create::<CommandRow>(conn, schema).await
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
        let commands = events
            .iter()
            .filter_map(|(event, payload)| {
                let key = vec![
                    text(&event.metadata.tenant_id),
                    text(meters::command_id(payload)?),
                ];
                Some((key, (*event, payload.clone())))
            })
            .collect();
        records::fold(conn, schema, commands, |row, (event, payload)| {
            meters::apply_command(row, &event.metadata.tenant_id, &payload, event.recorded_at)
        })
        .await?;
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
            let integration = event.metadata.actor.strip_prefix("integration:");
            Some(meters::apply_meter(
                row,
                &event.metadata.tenant_id,
                integration,
                &payload,
                event.recorded_at,
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

/// A meter's relay commands, newest first.
pub async fn commands(
    reader: &mut Reader,
    tenant: &str,
    meter_id: &str,
) -> Result<Vec<CommandRow>, StorageError> {
    let mut conn = reader.conn();
    let statement = format!(
        "SELECT {} FROM {} WHERE tenant_id = $1 AND meter_id = $2
          ORDER BY requested_at DESC, command_id LIMIT 200",
        CommandRow::column_list(),
        conn.backend().table(names::METERS, CommandRow::TABLE),
    );
    records::fetch_records(&mut conn, &statement, vec![text(tenant), text(meter_id)]).await
}

/// Commands of `integration`'s meters still waiting (requested or
/// published): (command, its meter's station).
pub async fn open_commands(
    reader: &mut Reader,
    tenant: &str,
    integration: &str,
) -> Result<Vec<(CommandRow, Option<String>)>, StorageError> {
    let mut conn = reader.conn();
    let backend = conn.backend();
    let columns = CommandRow::columns()
        .iter()
        .map(|column| format!("c.{}", column.name))
        .collect::<Vec<_>>()
        .join(", ");
    let statement = format!(
        "SELECT {columns}, m.station AS meter_station FROM {} c
           JOIN {} m ON m.tenant_id = c.tenant_id AND m.meter_id = c.meter_id
          WHERE c.tenant_id = $1 AND m.integration_id = $2
            AND c.status IN ('requested', 'published')
          ORDER BY c.requested_at",
        backend.table(names::METERS, CommandRow::TABLE),
        backend.table(names::METERS, MeterRow::TABLE),
    );
    records::fetch(
        &mut conn,
        &statement,
        vec![text(tenant), text(integration)],
        |row| Ok((CommandRow::from_row(row)?, row.opt_text("meter_station")?)),
    )
    .await
}

/// The integration's meters still counted as reporting whose latest
/// reading was recorded before `before`: (meter id, readings recorded),
/// at most `limit`, the longest quiet first.
pub async fn quiet_meters(
    reader: &mut Reader,
    tenant: &str,
    integration: &str,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, i64)>, StorageError> {
    let mut conn = reader.conn();
    let table = conn.backend().table(names::METERS, MeterRow::TABLE);
    records::fetch(
        &mut conn,
        &format!(
            "SELECT meter_id, readings FROM {table}
              WHERE tenant_id = $1 AND integration_id = $2 AND silent_since IS NULL
                AND last_heard_at < $3
              ORDER BY last_heard_at LIMIT $4"
        ),
        vec![
            text(tenant),
            text(integration),
            Value::Time(Some(before)),
            Value::BigInt(Some(limit)),
        ],
        |row| Ok((row.text("meter_id")?, row.int("readings")?)),
    )
    .await
}

/// A meter's registers for a consumption query: the last one before
/// `from` (the baseline), then every one from `from` to `to`, oldest first.
pub async fn registers(
    reader: &mut Reader,
    tenant: &str,
    meter_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, rust_decimal::Decimal)>, StorageError> {
    let mut conn = reader.conn();
    let table = conn.backend().table(names::METERS, ReadingRow::TABLE);
    let row = |row: &dyn crate::db::Portable| Ok((row.time("at")?, row.decimal("reading")?));
    let mut registers = records::fetch(
        &mut conn,
        &format!(
            "SELECT at, reading FROM {table}
              WHERE tenant_id = $1 AND meter_id = $2 AND reading IS NOT NULL AND at < $3
              ORDER BY at DESC LIMIT 1"
        ),
        vec![text(tenant), text(meter_id), Value::Time(Some(from))],
        row,
    )
    .await?;
    registers.extend(
        records::fetch(
            &mut conn,
            &format!(
                "SELECT at, reading FROM {table}
                  WHERE tenant_id = $1 AND meter_id = $2 AND reading IS NOT NULL
                    AND at >= $3 AND at < $4
                  ORDER BY at"
            ),
            vec![
                text(tenant),
                text(meter_id),
                Value::Time(Some(from)),
                Value::Time(Some(to)),
            ],
            row,
        )
        .await?,
    );
    Ok(registers)
}
