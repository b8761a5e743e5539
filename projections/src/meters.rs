//! Meters and their readings: one row per meter (status, last reading),
//! one per recorded reading.

use chrono::{DateTime, Utc};
use karvon_domain::meter::{MeterEvent, ReadingValues, RelayAction, SupplyStatus};
use rust_decimal::Decimal;

#[derive(Debug, Clone, PartialEq)]
pub struct MeterRow {
    pub tenant_id: String,
    pub meter_id: String,
    pub station: Option<String>,
    pub meter_type: Option<String>,
    /// The integration whose messages the meter sends (commands go back
    /// through it).
    pub integration_id: Option<String>,
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

/// Folds a meter event into the meter's row; `integration` is the
/// integration that reported it (from the event's actor), if one did.
pub fn apply_meter(
    row: Option<MeterRow>,
    tenant_id: &str,
    integration: Option<&str>,
    event: &MeterEvent,
) -> MeterRow {
    let mut row = row.unwrap_or_else(|| MeterRow {
        tenant_id: tenant_id.to_string(),
        meter_id: event.meter_id().to_string(),
        station: None,
        meter_type: None,
        integration_id: None,
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
        MeterEvent::MeterStatusChanged { status, .. } => {
            row.status = status_text(*status).to_string();
        }
        MeterEvent::RelayCommandRequested { .. }
        | MeterEvent::RelayCommandPublished { .. }
        | MeterEvent::RelayCommandConfirmed { .. }
        | MeterEvent::RelayCommandTimedOut { .. } => {}
    }
    if let Some(integration) = integration {
        row.integration_id = Some(integration.to_string());
    }
    row
}

pub fn status_text(status: SupplyStatus) -> &'static str {
    match status {
        SupplyStatus::Connected => "connected",
        SupplyStatus::Disconnected => "disconnected",
    }
}

pub fn action_text(action: RelayAction) -> &'static str {
    match action {
        RelayAction::RelayOff => "relay_off",
        RelayAction::RelayOn => "relay_on",
        RelayAction::SetTariff => "set_tariff",
    }
}

/// A relay command and where it stands: `requested` → `published` →
/// `confirmed`, or `timed_out`.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandRow {
    pub tenant_id: String,
    pub command_id: String,
    pub meter_id: String,
    pub action: String,
    pub tariff_id: Option<String>,
    pub status: String,
    pub requested_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Folds a meter event into the command it concerns (`None`: not about a
/// command, or a command never requested).
pub fn apply_command(
    row: Option<CommandRow>,
    tenant_id: &str,
    event: &MeterEvent,
    recorded_at: DateTime<Utc>,
) -> Option<CommandRow> {
    let status = match event {
        MeterEvent::RelayCommandRequested {
            meter_id,
            command_id,
            action,
            tariff_id,
            at,
        } => {
            return Some(CommandRow {
                tenant_id: tenant_id.to_string(),
                command_id: command_id.clone(),
                meter_id: meter_id.to_string(),
                action: action_text(*action).to_string(),
                tariff_id: tariff_id.clone(),
                status: "requested".to_string(),
                requested_at: *at,
                updated_at: *at,
            });
        }
        MeterEvent::RelayCommandPublished { .. } => "published",
        MeterEvent::RelayCommandConfirmed { .. } => "confirmed",
        MeterEvent::RelayCommandTimedOut { .. } => "timed_out",
        _ => return row,
    };
    row.map(|row| CommandRow {
        status: status.to_string(),
        updated_at: recorded_at,
        ..row
    })
}

/// The command an event concerns.
pub fn command_id(event: &MeterEvent) -> Option<&str> {
    match event {
        MeterEvent::RelayCommandRequested { command_id, .. }
        | MeterEvent::RelayCommandPublished { command_id, .. }
        | MeterEvent::RelayCommandConfirmed { command_id, .. }
        | MeterEvent::RelayCommandTimedOut { command_id, .. } => Some(command_id),
        _ => None,
    }
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
