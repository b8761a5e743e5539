//! Meters and their readings: one row per meter (status, last reading),
//! one per recorded reading.

use chrono::{DateTime, Utc};
use karvon_domain::meter::{MeterEvent, ReadingValues};
use rust_decimal::Decimal;

#[derive(Debug, Clone, PartialEq)]
pub struct MeterRow {
    pub tenant_id: String,
    pub meter_id: String,
    pub station: Option<String>,
    pub meter_type: Option<String>,
    /// `connected`, `disconnected` or `unknown` (until a status message).
    pub status: String,
    pub last_reading_at: Option<DateTime<Utc>>,
    /// The values of the latest reading (by its instant).
    pub last_reading: serde_json::Value,
    pub readings: i64,
    /// Readings for an instant already recorded that carried other values.
    pub conflicts: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadingRow {
    pub tenant_id: String,
    pub meter_id: String,
    pub at: DateTime<Utc>,
    pub reading: Option<Decimal>,
    pub consumption: Option<Decimal>,
    pub voltage: Option<Decimal>,
    pub current: Option<Decimal>,
    pub power_factor: Option<Decimal>,
    /// The register went below the reading before it.
    pub backwards: bool,
}

/// The values as the API shows them (exact decimals as strings).
pub fn values_json(values: &ReadingValues) -> serde_json::Value {
    serde_json::json!({
        "reading": values.reading,
        "consumption": values.consumption,
        "voltage": values.voltage,
        "current": values.current,
        "power_factor": values.power_factor,
    })
}

/// Folds a meter event into the meter's row.
pub fn apply_meter(row: Option<MeterRow>, tenant_id: &str, event: &MeterEvent) -> MeterRow {
    let mut row = row.unwrap_or_else(|| MeterRow {
        tenant_id: tenant_id.to_string(),
        meter_id: event.meter_id().to_string(),
        station: None,
        meter_type: None,
        status: "unknown".to_string(),
        last_reading_at: None,
        last_reading: serde_json::Value::Null,
        readings: 0,
        conflicts: 0,
    });
    match event {
        MeterEvent::MeterReadingRecorded {
            station,
            meter_type,
            reading,
            ..
        } => {
            row.station = station.clone().or(row.station);
            row.meter_type = meter_type.clone().or(row.meter_type);
            row.readings += 1;
            if row.last_reading_at.is_none_or(|last| reading.at >= last) {
                row.last_reading_at = Some(reading.at);
                row.last_reading = values_json(&reading.values);
            }
        }
        MeterEvent::MeterReadingConflicted { .. } => row.conflicts += 1,
    }
    row
}

/// The reading row a recorded reading makes.
pub fn reading_row(tenant_id: &str, event: &MeterEvent) -> Option<ReadingRow> {
    let MeterEvent::MeterReadingRecorded {
        meter_id,
        reading,
        backwards,
        ..
    } = event
    else {
        return None;
    };
    Some(ReadingRow {
        tenant_id: tenant_id.to_string(),
        meter_id: meter_id.to_string(),
        at: reading.at,
        reading: reading.values.reading,
        consumption: reading.values.consumption,
        voltage: reading.values.voltage,
        current: reading.values.current,
        power_factor: reading.values.power_factor,
        backwards: *backwards,
    })
}
