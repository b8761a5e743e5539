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
    /// When Karvon last recorded a reading of it (its own clock, unlike
    /// `last_reading_at`, which is the meter's).
    pub last_heard_at: Option<DateTime<Utc>>,
    /// The values of the latest reading (by its instant).
    pub last_reading: serde_json::Value,
    pub readings: i64,
    /// Readings for an instant already recorded that carried other values.
    pub conflicts: i64,
    /// When the meter was marked silent (no reading for the integration's
    /// `offline_after_secs`); `None` while it reports.
    pub silent_since: Option<DateTime<Utc>>,
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
    /// Its interval consumption was beyond mean ± 3σ of the meter's usual.
    pub anomalous: bool,
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

/// Folds a meter event, recorded at `recorded_at`, into the meter's row;
/// `integration` is the integration that reported it (from the event's
/// actor), if one did.
pub fn apply_meter(
    row: Option<MeterRow>,
    tenant_id: &str,
    integration: Option<&str>,
    event: &MeterEvent,
    recorded_at: DateTime<Utc>,
) -> MeterRow {
    let mut row = row.unwrap_or_else(|| MeterRow {
        tenant_id: tenant_id.to_string(),
        meter_id: event.meter_id().to_string(),
        station: None,
        meter_type: None,
        integration_id: None,
        status: "unknown".to_string(),
        last_reading_at: None,
        last_heard_at: None,
        last_reading: serde_json::Value::Null,
        readings: 0,
        conflicts: 0,
        silent_since: None,
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
            row.last_heard_at = row.last_heard_at.max(Some(recorded_at));
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
        | MeterEvent::RelayCommandTimedOut { .. }
        | MeterEvent::MeterAlertRaised { .. } => {}
        MeterEvent::MeterWentSilent { at, .. } => row.silent_since = Some(*at),
        MeterEvent::MeterReportingAgain { .. } => row.silent_since = None,
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
        anomaly,
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
        anomalous: anomaly.is_some(),
    })
}

/// A period's consumption by a meter.
#[derive(Debug, Clone, PartialEq)]
pub struct Consumption {
    /// The period's first local instant.
    pub period_start: chrono::NaiveDateTime,
    /// kWh: the last register at or before the period's end minus the last
    /// one at or before its start (the first reading when none precedes).
    pub consumption: Decimal,
    /// Readings in the period.
    pub readings: i64,
    /// Steps where the register went down in the period (a reset or a
    /// replaced meter: the difference then understates or goes negative).
    pub backwards_steps: i64,
}

/// How a reading's local time is cut into periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumptionPeriod {
    Hourly,
    Daily,
    Monthly,
}

impl ConsumptionPeriod {
    fn start(self, local: chrono::NaiveDateTime) -> chrono::NaiveDateTime {
        use chrono::{Datelike, Timelike};
        let day = local.date();
        match self {
            ConsumptionPeriod::Hourly => local
                .with_minute(0)
                .and_then(|time| time.with_second(0))
                .and_then(|time| time.with_nanosecond(0))
                .unwrap_or(local),
            ConsumptionPeriod::Daily => day.and_hms_opt(0, 0, 0).unwrap_or(local),
            ConsumptionPeriod::Monthly => day
                .with_day(1)
                .and_then(|first| first.and_hms_opt(0, 0, 0))
                .unwrap_or(local),
        }
    }
}

/// Consumption per local period from register readings (oldest first; a
/// reading before `from` may lead as the baseline), from register
/// differences: interval fields are not summed, so a missed or repeated
/// interval message changes nothing.
pub fn consumption(
    registers: &[(DateTime<Utc>, Decimal)],
    local: impl Fn(DateTime<Utc>) -> chrono::NaiveDateTime,
    period: ConsumptionPeriod,
    from: DateTime<Utc>,
) -> Vec<Consumption> {
    let mut out: Vec<Consumption> = Vec::new();
    // The last register at or before the current period's start.
    let mut baseline: Option<Decimal> = None;
    let mut previous: Option<Decimal> = None;
    for (at, register) in registers {
        if *at < from {
            baseline = Some(*register);
            previous = Some(*register);
            continue;
        }
        let start = period.start(local(*at));
        if out.last().is_none_or(|last| last.period_start != start) {
            // The period before ended at the previous reading.
            baseline = previous.or(Some(*register));
            out.push(Consumption {
                period_start: start,
                consumption: Decimal::ZERO,
                readings: 0,
                backwards_steps: 0,
            });
        }
        if let Some(bucket) = out.last_mut() {
            bucket.readings += 1;
            if previous.is_some_and(|before| *register < before) {
                bucket.backwards_steps += 1;
            }
            bucket.consumption = *register - baseline.unwrap_or(*register);
        }
        previous = Some(*register);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().expect("time")
    }

    fn kwh(text: &str) -> Decimal {
        text.parse().expect("decimal")
    }

    #[test]
    fn consumption_is_the_register_difference_per_local_period() {
        // Tashkent: UTC+5, no daylight saving.
        let zone = |at: DateTime<Utc>| (at + chrono::Duration::hours(5)).naive_utc();
        let registers = [
            (at("2025-01-01T18:50:00Z"), kwh("100.00")), // baseline (23:50 local)
            (at("2025-01-01T19:10:00Z"), kwh("100.75")), // 00:10 local, Jan 2
            (at("2025-01-01T19:40:00Z"), kwh("101.50")),
            (at("2025-01-01T20:05:00Z"), kwh("102.00")), // 01:05
            (at("2025-01-01T20:30:00Z"), kwh("103.25")),
            (at("2025-01-01T21:30:00Z"), kwh("3.00")), // 02:30: a reset
        ];
        let from = at("2025-01-01T19:00:00Z");
        let hourly = consumption(&registers, zone, ConsumptionPeriod::Hourly, from);
        let got: Vec<(String, Decimal, i64)> = hourly
            .iter()
            .map(|b| (b.period_start.to_string(), b.consumption, b.backwards_steps))
            .collect();
        assert_eq!(
            got,
            [
                ("2025-01-02 00:00:00".to_string(), kwh("1.50"), 0),
                ("2025-01-02 01:00:00".to_string(), kwh("1.75"), 0),
                ("2025-01-02 02:00:00".to_string(), kwh("-100.25"), 1),
            ]
        );
        let daily = consumption(&registers, zone, ConsumptionPeriod::Daily, from);
        assert_eq!(
            (daily[0].consumption, daily[0].readings),
            (kwh("-97.00"), 5)
        );
        // No reading before the range: the first one is the baseline.
        let first = consumption(&registers[1..3], zone, ConsumptionPeriod::Hourly, from);
        assert_eq!(first[0].consumption, kwh("0.75"));
    }
}
