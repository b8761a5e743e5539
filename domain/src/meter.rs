//! The `Meter` aggregate: a smart meter's readings as it reports them.
//!
//! Identity: tenant + meter id (stream id `<tenant>/<meter>`). Readings
//! are facts: each is kept with its exact decimals. The same (meter,
//! timestamp) again with the same values changes nothing; with other
//! values the first stays and the conflict is recorded. A cumulative
//! register lower than the reading before it is recorded and flagged.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
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
            | MeterEvent::MeterAlertRaised { meter_id, .. } => meter_id,
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
            let backwards = match (reading.values.reading, self.register_before(reading.at)) {
                (Some(now), Some(before)) => now < before,
                _ => false,
            };
            let event = MeterEvent::MeterReadingRecorded {
                meter_id: meter_id.clone(),
                station: station.clone(),
                meter_type: meter_type.clone(),
                reading,
                backwards,
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
}
