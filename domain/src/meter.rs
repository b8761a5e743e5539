//! The `Meter` aggregate: a smart meter's readings as it reports them.
//!
//! Identity: tenant + meter id (stream id `<tenant>/<meter>`). Readings
//! are facts: each is kept with its exact decimals. The same (meter,
//! timestamp) again with the same values changes nothing; with other
//! values the first stays and the conflict is recorded. A cumulative
//! register lower than the reading before it is recorded and flagged.
//!
//! Interval consumption far from the meter's usual (beyond mean ± 3σ of
//! its readings over the last [`ANOMALY_WINDOW_DAYS`] days, once it has
//! at least [`ANOMALY_MIN_READINGS`] of them) is recorded with its
//! [`Anomaly`]. The meter keeps one tally per UTC day for that, so the
//! check needs no history beyond the stream's state.
//!
//! A meter nobody heard from for a while is marked silent (by a sweep,
//! [`MeterCommand::MarkSilent`]); its next reading says it reports again.

use std::collections::BTreeMap;

use chrono::{DateTime, Days, NaiveDate, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::{EVENT_VERSION_1, Id};

/// Readings remembered per meter (instant, fingerprint, register) for
/// de-duplication and the backwards check: a redelivery older than the
/// last this many readings is no longer recognised. Kept small because
/// the state is the stream's snapshot, rewritten on every append.
pub const REMEMBERED_READINGS: usize = 128;

/// The days of interval consumption an anomaly is judged against.
pub const ANOMALY_WINDOW_DAYS: u64 = 30;
/// Readings with consumption needed in the window before any is judged.
pub const ANOMALY_MIN_READINGS: u32 = 20;

/// What a meter measured at one instant, exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadingValues {
    /// Cumulative register, kWh.
    pub reading: Option<Decimal>,
    /// Consumption over the reporting interval, kWh.
    pub consumption: Option<Decimal>,
    pub voltage: Option<Decimal>,
    pub current: Option<Decimal>,
    pub power_factor: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reading {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub values: ReadingValues,
}

/// Whether the meter's supply is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupplyStatus {
    Connected,
    Disconnected,
}

/// What an operator asks a meter to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelayAction {
    RelayOff,
    RelayOn,
    SetTariff,
}

impl RelayAction {
    /// The status that confirms the action (`None`: nothing to wait for).
    pub fn confirmed_by(self) -> Option<SupplyStatus> {
        match self {
            RelayAction::RelayOff => Some(SupplyStatus::Disconnected),
            RelayAction::RelayOn => Some(SupplyStatus::Connected),
            RelayAction::SetTariff => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum MeterCommand {
    /// Readings as they arrived (one batch of a listener or webhook).
    RecordReadings {
        meter_id: Id,
        station: Option<String>,
        meter_type: Option<String>,
        readings: Vec<Reading>,
    },
    /// A status the meter reported; confirms a pending relay command.
    ChangeStatus {
        meter_id: Id,
        status: SupplyStatus,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    RequestRelay {
        command_id: String,
        action: RelayAction,
        tariff_id: Option<String>,
        at: DateTime<Utc>,
    },
    /// The command went out on the broker.
    MarkPublished { command_id: String },
    /// No confirmation came in time.
    TimeOut {
        command_id: String,
        at: DateTime<Utc>,
    },
    /// An alarm the meter reported; the same (type, instant) again changes
    /// nothing.
    RecordAlert { meter_id: Id, alert: DeviceAlert },
    /// Nothing was heard from the meter for a while, as a sweep saw it
    /// after `readings_seen` recorded readings: it goes silent, unless more
    /// readings were recorded meanwhile or it is silent already.
    MarkSilent {
        readings_seen: u64,
        at: DateTime<Utc>,
    },
}

/// Interval consumption beyond mean ± 3σ of the meter's recent readings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Mean interval consumption over the window (6 decimals).
    pub mean: Decimal,
    /// Population standard deviation over the window (6 decimals).
    pub stddev: Decimal,
    /// Readings the mean and deviation are over.
    pub readings: u32,
}

/// An alarm as the meter sent it (`fixtures/acrel/webhook-alert.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAlert {
    pub alert_type: String,
    pub severity: Option<String>,
    pub value: Option<Decimal>,
    pub threshold: Option<Decimal>,
    pub message: Option<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MeterEvent {
    MeterReadingRecorded {
        meter_id: Id,
        station: Option<String>,
        meter_type: Option<String>,
        #[serde(flatten)]
        reading: Reading,
        /// The register went below the reading before it.
        #[serde(default)]
        backwards: bool,
        /// Its interval consumption is far from the meter's usual.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        anomaly: Option<Anomaly>,
    },
    /// A reading for an instant already recorded, with other values: the
    /// first (in its `MeterReadingRecorded`) stays.
    MeterReadingConflicted {
        meter_id: Id,
        at: DateTime<Utc>,
        received: ReadingValues,
    },
    MeterStatusChanged {
        meter_id: Id,
        status: SupplyStatus,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    RelayCommandRequested {
        meter_id: Id,
        command_id: String,
        action: RelayAction,
        tariff_id: Option<String>,
        at: DateTime<Utc>,
    },
    RelayCommandPublished {
        meter_id: Id,
        command_id: String,
    },
    RelayCommandConfirmed {
        meter_id: Id,
        command_id: String,
        at: DateTime<Utc>,
    },
    RelayCommandTimedOut {
        meter_id: Id,
        command_id: String,
        at: DateTime<Utc>,
    },
    MeterAlertRaised {
        meter_id: Id,
        #[serde(flatten)]
        alert: DeviceAlert,
    },
    /// No reading since `last_reading_at`, noticed at `at`.
    MeterWentSilent {
        meter_id: Id,
        last_reading_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A silent meter sent a reading (at `at`) again.
    MeterReportingAgain {
        meter_id: Id,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for MeterEvent {
    fn event_type(&self) -> String {
        match self {
            MeterEvent::MeterReadingRecorded { .. } => "MeterReadingRecorded",
            MeterEvent::MeterReadingConflicted { .. } => "MeterReadingConflicted",
            MeterEvent::MeterStatusChanged { .. } => "MeterStatusChanged",
            MeterEvent::RelayCommandRequested { .. } => "RelayCommandRequested",
            MeterEvent::RelayCommandPublished { .. } => "RelayCommandPublished",
            MeterEvent::RelayCommandConfirmed { .. } => "RelayCommandConfirmed",
            MeterEvent::RelayCommandTimedOut { .. } => "RelayCommandTimedOut",
            MeterEvent::MeterAlertRaised { .. } => "MeterAlertRaised",
            MeterEvent::MeterWentSilent { .. } => "MeterWentSilent",
            MeterEvent::MeterReportingAgain { .. } => "MeterReportingAgain",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

impl MeterEvent {
    pub fn meter_id(&self) -> &Id {
        match self {
            MeterEvent::MeterReadingRecorded { meter_id, .. }
            | MeterEvent::MeterReadingConflicted { meter_id, .. }
            | MeterEvent::MeterStatusChanged { meter_id, .. }
            | MeterEvent::RelayCommandRequested { meter_id, .. }
            | MeterEvent::RelayCommandPublished { meter_id, .. }
            | MeterEvent::RelayCommandConfirmed { meter_id, .. }
            | MeterEvent::RelayCommandTimedOut { meter_id, .. }
            | MeterEvent::MeterAlertRaised { meter_id, .. }
            | MeterEvent::MeterWentSilent { meter_id, .. }
            | MeterEvent::MeterReportingAgain { meter_id, .. } => meter_id,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeterError {
    #[error("{field}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
    #[error("the meter has not reported yet")]
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    meter_id: Option<Id>,
    /// The latest readings by instant (at most [`REMEMBERED_READINGS`]).
    recent: BTreeMap<DateTime<Utc>, Remembered>,
    #[serde(default)]
    status: Option<SupplyStatus>,
    /// Relay commands not yet confirmed or timed out, by id.
    #[serde(default)]
    pending: BTreeMap<String, Pending>,
    /// The latest device alarms (type and instant), for de-duplication.
    #[serde(default)]
    recent_alerts: Vec<(String, DateTime<Utc>)>,
    /// Interval consumption per UTC day (the last
    /// [`ANOMALY_WINDOW_DAYS`] + 1 days with any).
    #[serde(default)]
    usage: BTreeMap<NaiveDate, Tally>,
    /// Marked silent and not heard from since.
    #[serde(default)]
    silent: bool,
    /// Readings recorded so far.
    #[serde(default)]
    recorded: u64,
}

/// Count, sum and sum of squares of a day's interval consumption.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Tally {
    count: u32,
    sum: Decimal,
    squares: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    action: RelayAction,
    published: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    fingerprint: u64,
    register: Option<Decimal>,
}

impl ReadingValues {
    /// FNV-1a over the values' text: the same on every build and platform.
    fn fingerprint(&self) -> u64 {
        let text = format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}",
            self.reading.map(|v| v.normalize()),
            self.consumption.map(|v| v.normalize()),
            self.voltage.map(|v| v.normalize()),
            self.current.map(|v| v.normalize()),
            self.power_factor.map(|v| v.normalize()),
        );
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    }
}

impl Meter {
    async fn record(
        &mut self,
        meter_id: Id,
        station: Option<String>,
        meter_type: Option<String>,
        readings: Vec<Reading>,
        sink: &EventSink<Self>,
    ) -> Result<(), MeterError> {
        for reading in readings {
            if let Some(kept) = self.recent.get(&reading.at) {
                if kept.fingerprint != reading.values.fingerprint() {
                    let event = MeterEvent::MeterReadingConflicted {
                        meter_id: meter_id.clone(),
                        at: reading.at,
                        received: reading.values,
                    };
                    sink.write(event, self).await;
                }
                continue;
            }
            if self.silent {
                let event = MeterEvent::MeterReportingAgain {
                    meter_id: meter_id.clone(),
                    at: reading.at,
                };
                sink.write(event, self).await;
            }
            let backwards = match (reading.values.reading, self.register_before(reading.at)) {
                (Some(now), Some(before)) => now < before,
                _ => false,
            };
            let anomaly = reading
                .values
                .consumption
                .and_then(|consumption| self.anomaly(reading.at, consumption));
            let event = MeterEvent::MeterReadingRecorded {
                meter_id: meter_id.clone(),
                station: station.clone(),
                meter_type: meter_type.clone(),
                reading,
                backwards,
                anomaly,
            };
            sink.write(event, self).await;
        }
        Ok(())
    }

    pub fn is_known(&self) -> bool {
        self.meter_id.is_some()
    }

    pub fn status(&self) -> Option<SupplyStatus> {
        self.status
    }

    /// Whether `consumption` at `at` lies beyond mean ± 3σ of the window's
    /// readings: (x − mean)² > 9σ², so no square root decides it. `None`
    /// with too few readings or on arithmetic overflow.
    fn anomaly(&self, at: DateTime<Utc>, consumption: Decimal) -> Option<Anomaly> {
        let day = at.date_naive();
        let from = day.checked_sub_days(Days::new(ANOMALY_WINDOW_DAYS - 1))?;
        let mut total = Tally::default();
        for tally in self.usage.range(from..=day).map(|(_, tally)| tally) {
            total.count += tally.count;
            total.sum = total.sum.checked_add(tally.sum)?;
            total.squares = total.squares.checked_add(tally.squares)?;
        }
        if total.count < ANOMALY_MIN_READINGS {
            return None;
        }
        let count = Decimal::from(total.count);
        let mean = total.sum.checked_div(count)?;
        let variance = total
            .squares
            .checked_div(count)?
            .checked_sub(mean.checked_mul(mean)?)?
            .max(Decimal::ZERO);
        let deviation = consumption.checked_sub(mean)?;
        let beyond = deviation.checked_mul(deviation)? > variance.checked_mul(Decimal::from(9))?;
        beyond.then(|| Anomaly {
            mean: mean.round_dp(6).normalize(),
            stddev: rust_decimal::MathematicalOps::sqrt(&variance)
                .unwrap_or_default()
                .round_dp(6)
                .normalize(),
            readings: total.count,
        })
    }

    /// Counts a reading's interval consumption in its day's tally and
    /// forgets days out of the window.
    fn tally(&mut self, at: DateTime<Utc>, consumption: Decimal) {
        let tally = self.usage.entry(at.date_naive()).or_default();
        let (Some(sum), Some(squares)) = (
            tally.sum.checked_add(consumption),
            consumption
                .checked_mul(consumption)
                .and_then(|square| tally.squares.checked_add(square)),
        ) else {
            return;
        };
        tally.count += 1;
        tally.sum = sum;
        tally.squares = squares;
        let newest = self.usage.last_key_value().map(|(day, _)| *day);
        if let Some(oldest_kept) =
            newest.and_then(|day| day.checked_sub_days(Days::new(ANOMALY_WINDOW_DAYS)))
        {
            self.usage = self.usage.split_off(&oldest_kept);
        }
    }

    /// The register of the latest reading before `at` that has one.
    fn register_before(&self, at: DateTime<Utc>) -> Option<Decimal> {
        self.recent
            .range(..at)
            .rev()
            .find_map(|(_, remembered)| remembered.register)
    }
}

impl Aggregate for Meter {
    const TYPE: &'static str = "Meter";
    type Command = MeterCommand;
    type Event = MeterEvent;
    type Error = MeterError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            MeterCommand::RecordReadings {
                meter_id,
                station,
                meter_type,
                readings,
            } => {
                self.record(meter_id, station, meter_type, readings, sink)
                    .await
            }
            MeterCommand::ChangeStatus {
                meter_id,
                status,
                reason,
                at,
            } => {
                if self.status != Some(status) {
                    let event = MeterEvent::MeterStatusChanged {
                        meter_id: meter_id.clone(),
                        status,
                        reason,
                        at,
                    };
                    sink.write(event, self).await;
                }
                // The status confirms every pending command that wanted it.
                let confirmed: Vec<String> = self
                    .pending
                    .iter()
                    .filter(|(_, pending)| pending.action.confirmed_by() == Some(status))
                    .map(|(id, _)| id.clone())
                    .collect();
                for command_id in confirmed {
                    let event = MeterEvent::RelayCommandConfirmed {
                        meter_id: meter_id.clone(),
                        command_id,
                        at,
                    };
                    sink.write(event, self).await;
                }
                Ok(())
            }
            MeterCommand::RequestRelay {
                command_id,
                action,
                tariff_id,
                at,
            } => {
                let meter_id = self.meter_id.clone().ok_or(MeterError::Unknown)?;
                if action == RelayAction::SetTariff && tariff_id.is_none() {
                    return Err(MeterError::Invalid {
                        field: "tariff_id",
                        reason: "is required for set_tariff",
                    });
                }
                let event = MeterEvent::RelayCommandRequested {
                    meter_id,
                    command_id,
                    action,
                    tariff_id,
                    at,
                };
                sink.write(event, self).await;
                Ok(())
            }
            MeterCommand::MarkPublished { command_id } => {
                let meter_id = self.meter_id.clone().ok_or(MeterError::Unknown)?;
                match self.pending.get(&command_id) {
                    Some(pending) if pending.published => Ok(()),
                    Some(_) => {
                        let event = MeterEvent::RelayCommandPublished {
                            meter_id,
                            command_id,
                        };
                        sink.write(event, self).await;
                        Ok(())
                    }
                    None => Ok(()),
                }
            }
            MeterCommand::RecordAlert { meter_id, alert } => {
                let key = (alert.alert_type.clone(), alert.at);
                if self.recent_alerts.contains(&key) {
                    return Ok(());
                }
                let event = MeterEvent::MeterAlertRaised { meter_id, alert };
                sink.write(event, self).await;
                Ok(())
            }
            MeterCommand::MarkSilent { readings_seen, at } => {
                let (Some(meter_id), Some(latest)) =
                    (self.meter_id.clone(), self.recent.last_key_value())
                else {
                    return Ok(());
                };
                if self.silent || self.recorded > readings_seen {
                    return Ok(());
                }
                let event = MeterEvent::MeterWentSilent {
                    meter_id,
                    last_reading_at: *latest.0,
                    at,
                };
                sink.write(event, self).await;
                Ok(())
            }
            MeterCommand::TimeOut { command_id, at } => {
                let meter_id = self.meter_id.clone().ok_or(MeterError::Unknown)?;
                if !self.pending.contains_key(&command_id) {
                    return Ok(());
                }
                let event = MeterEvent::RelayCommandTimedOut {
                    meter_id,
                    command_id,
                    at,
                };
                sink.write(event, self).await;
                Ok(())
            }
        }
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            MeterEvent::MeterReadingRecorded {
                meter_id, reading, ..
            } => {
                self.meter_id = Some(meter_id);
                self.recorded += 1;
                if let Some(consumption) = reading.values.consumption {
                    self.tally(reading.at, consumption);
                }
                let remembered = Remembered {
                    fingerprint: reading.values.fingerprint(),
                    register: reading.values.reading,
                };
                self.recent.insert(reading.at, remembered);
                while self.recent.len() > REMEMBERED_READINGS {
                    self.recent.pop_first();
                }
            }
            MeterEvent::MeterReadingConflicted { .. } => {}
            MeterEvent::MeterStatusChanged {
                meter_id, status, ..
            } => {
                self.meter_id = Some(meter_id);
                self.status = Some(status);
            }
            MeterEvent::RelayCommandRequested {
                command_id, action, ..
            } => {
                self.pending.insert(
                    command_id,
                    Pending {
                        action,
                        published: false,
                    },
                );
            }
            MeterEvent::RelayCommandPublished { command_id, .. } => {
                if let Some(pending) = self.pending.get_mut(&command_id) {
                    pending.published = true;
                }
            }
            MeterEvent::RelayCommandConfirmed { command_id, .. }
            | MeterEvent::RelayCommandTimedOut { command_id, .. } => {
                self.pending.remove(&command_id);
            }
            MeterEvent::MeterAlertRaised { meter_id, alert } => {
                self.meter_id = Some(meter_id);
                self.recent_alerts.push((alert.alert_type, alert.at));
                if self.recent_alerts.len() > REMEMBERED_READINGS {
                    self.recent_alerts.remove(0);
                }
            }
            MeterEvent::MeterWentSilent { .. } => self.silent = true,
            MeterEvent::MeterReportingAgain { .. } => self.silent = false,
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type MeterTest = TestFramework<Meter>;

    fn id() -> Id {
        Id::parse("ACR-001234").expect("id")
    }

    fn reading(minute: u32, register: &str) -> Reading {
        Reading {
            at: format!("2024-12-15T10:{minute:02}:00Z")
                .parse()
                .expect("time"),
            values: ReadingValues {
                reading: Some(register.parse().expect("decimal")),
                consumption: Some("125.5".parse().expect("decimal")),
                voltage: Some("220.5".parse().expect("decimal")),
                current: None,
                power_factor: Some("0.95".parse().expect("decimal")),
            },
        }
    }

    fn record(readings: Vec<Reading>) -> MeterCommand {
        MeterCommand::RecordReadings {
            meter_id: id(),
            station: Some("S1".into()),
            meter_type: None,
            readings,
        }
    }

    fn recorded(reading: Reading, backwards: bool) -> MeterEvent {
        MeterEvent::MeterReadingRecorded {
            meter_id: id(),
            station: Some("S1".into()),
            meter_type: None,
            reading,
            backwards,
            anomaly: None,
        }
    }

    #[test]
    fn a_repeated_reading_changes_nothing_and_a_different_one_is_a_conflict() {
        MeterTest::with(())
            .given(vec![recorded(reading(30, "15234.56"), false)])
            .when(record(vec![reading(30, "15234.56")]))
            .then_expect_events(vec![]);
        MeterTest::with(())
            .given(vec![recorded(reading(30, "15234.56"), false)])
            .when(record(vec![reading(30, "15300")]))
            .then_expect_events(vec![MeterEvent::MeterReadingConflicted {
                meter_id: id(),
                at: reading(30, "0").at,
                received: reading(30, "15300").values,
            }]);
    }

    #[test]
    fn a_register_going_backwards_is_recorded_and_flagged() {
        MeterTest::with(())
            .given(vec![recorded(reading(30, "15234.56"), false)])
            .when(record(vec![reading(31, "15000.01"), reading(32, "15240")]))
            .then_expect_events(vec![
                recorded(reading(31, "15000.01"), true),
                recorded(reading(32, "15240"), false),
            ]);
    }

    #[test]
    fn a_batch_with_the_same_instant_twice_records_it_once() {
        MeterTest::with(())
            .given_no_previous_events()
            .when(record(vec![reading(30, "1"), reading(30, "1")]))
            .then_expect_events(vec![recorded(reading(30, "1"), false)]);
    }

    #[test]
    fn relay_off_is_confirmed_by_a_disconnected_status_or_times_out() {
        let at = reading(30, "1").at;
        let requested = MeterEvent::RelayCommandRequested {
            meter_id: id(),
            command_id: "c1".into(),
            action: RelayAction::RelayOff,
            tariff_id: None,
            at,
        };
        MeterTest::with(())
            .given(vec![recorded(reading(30, "1"), false)])
            .when(MeterCommand::RequestRelay {
                command_id: "c1".into(),
                action: RelayAction::RelayOff,
                tariff_id: None,
                at,
            })
            .then_expect_events(vec![requested.clone()]);
        MeterTest::with(())
            .given(vec![recorded(reading(30, "1"), false), requested.clone()])
            .when(MeterCommand::ChangeStatus {
                meter_id: id(),
                status: SupplyStatus::Disconnected,
                reason: Some("remote_command".into()),
                at,
            })
            .then_expect_events(vec![
                MeterEvent::MeterStatusChanged {
                    meter_id: id(),
                    status: SupplyStatus::Disconnected,
                    reason: Some("remote_command".into()),
                    at,
                },
                MeterEvent::RelayCommandConfirmed {
                    meter_id: id(),
                    command_id: "c1".into(),
                    at,
                },
            ]);
        let confirmed = MeterEvent::RelayCommandConfirmed {
            meter_id: id(),
            command_id: "c1".into(),
            at,
        };
        MeterTest::with(())
            .given(vec![
                recorded(reading(30, "1"), false),
                requested.clone(),
                confirmed,
            ])
            .when(MeterCommand::TimeOut {
                command_id: "c1".into(),
                at,
            })
            .then_expect_events(vec![]);
        MeterTest::with(())
            .given(vec![recorded(reading(30, "1"), false), requested])
            .when(MeterCommand::TimeOut {
                command_id: "c1".into(),
                at,
            })
            .then_expect_events(vec![MeterEvent::RelayCommandTimedOut {
                meter_id: id(),
                command_id: "c1".into(),
                at,
            }]);
    }

    #[test]
    fn a_meter_that_never_reported_takes_no_command() {
        MeterTest::with(())
            .given_no_previous_events()
            .when(MeterCommand::RequestRelay {
                command_id: "c1".into(),
                action: RelayAction::RelayOn,
                tariff_id: None,
                at: reading(1, "1").at,
            })
            .then_expect_error(MeterError::Unknown);
    }

    /// A reading of interval consumption only, on day `day` counted from
    /// 1 December 2024 (so 32 is 1 January 2025).
    fn used(day: u64, hour: u32, consumption: &str) -> Reading {
        let date = NaiveDate::from_ymd_opt(2024, 12, 1)
            .and_then(|first| first.checked_add_days(Days::new(day - 1)))
            .expect("date");
        Reading {
            at: date.and_hms_opt(hour, 0, 0).expect("time").and_utc(),
            values: ReadingValues {
                reading: None,
                consumption: Some(consumption.parse().expect("decimal")),
                voltage: None,
                current: None,
                power_factor: None,
            },
        }
    }

    fn used_event(reading: Reading, anomaly: Option<Anomaly>) -> MeterEvent {
        MeterEvent::MeterReadingRecorded {
            meter_id: id(),
            station: Some("S1".into()),
            meter_type: None,
            reading,
            backwards: false,
            anomaly,
        }
    }

    /// 24 readings alternating 10 and 12 kWh (mean 11, σ 1) over 1–6 December.
    fn usual() -> Vec<MeterEvent> {
        (0..24)
            .map(|n| {
                let kwh = if n % 2 == 0 { "10" } else { "12" };
                used_event(used(1 + u64::from(n / 4), n % 4, kwh), None)
            })
            .collect()
    }

    #[test]
    fn consumption_beyond_three_deviations_of_the_last_thirty_days_is_an_anomaly() {
        MeterTest::with(())
            .given(usual())
            .when(record(vec![used(7, 0, "13.9")]))
            .then_expect_events(vec![used_event(used(7, 0, "13.9"), None)]);
        let mut before = usual();
        before.push(used_event(used(7, 0, "13.9"), None));
        let anomaly = Anomaly {
            mean: "11.116".parse().expect("decimal"),
            stddev: "1.132671".parse().expect("decimal"),
            readings: 25,
        };
        MeterTest::with(())
            .given(before)
            .when(record(vec![used(7, 1, "15")]))
            .then_expect_events(vec![used_event(used(7, 1, "15"), Some(anomaly))]);
    }

    #[test]
    fn too_few_readings_or_readings_older_than_the_window_judge_nothing() {
        MeterTest::with(())
            .given(usual()[..19].to_vec())
            .when(record(vec![used(7, 0, "100")]))
            .then_expect_events(vec![used_event(used(7, 0, "100"), None)]);
        // 1–6 December lie outside 8 December – 6 January.
        MeterTest::with(())
            .given(usual())
            .when(record(vec![used(37, 0, "100")]))
            .then_expect_events(vec![used_event(used(37, 0, "100"), None)]);
    }

    #[test]
    fn a_silent_meter_is_marked_once_and_its_next_reading_says_it_reports_again() {
        let last = reading(30, "1").at;
        let silent = MeterEvent::MeterWentSilent {
            meter_id: id(),
            last_reading_at: last,
            at: reading(59, "1").at,
        };
        let mark = |readings_seen: u64| MeterCommand::MarkSilent {
            readings_seen,
            at: reading(59, "1").at,
        };
        MeterTest::with(())
            .given(vec![recorded(reading(30, "1"), false)])
            .when(mark(1))
            .then_expect_events(vec![silent.clone()]);
        MeterTest::with(())
            .given(vec![recorded(reading(30, "1"), false), silent.clone()])
            .when(mark(1))
            .then_expect_events(vec![]);
        // A reading was recorded after what the sweep saw: not silent.
        MeterTest::with(())
            .given(vec![
                recorded(reading(30, "1"), false),
                recorded(reading(45, "2"), false),
            ])
            .when(mark(1))
            .then_expect_events(vec![]);
        MeterTest::with(())
            .given(vec![recorded(reading(30, "1"), false), silent])
            .when(record(vec![reading(50, "2")]))
            .then_expect_events(vec![
                MeterEvent::MeterReportingAgain {
                    meter_id: id(),
                    at: reading(50, "2").at,
                },
                recorded(reading(50, "2"), false),
            ]);
    }
}
