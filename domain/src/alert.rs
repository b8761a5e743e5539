//! The `Alert` aggregate: one stream per cause (`meter_over_voltage:ACR-1`,
//! `relay_command_timeout:ACR-1`), so there is at most one active alert
//! per cause: raising it again while it is open only counts an
//! occurrence, and a repeat of the same occurrence (the same device
//! message) changes nothing. Once resolved, the next raise opens it anew.
//!
//! Identity: tenant + alert id (the cause; stream id `<tenant>/<alert>`).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{EVENT_VERSION_1, Id};

/// Occurrence keys remembered per alert (a repeat of one of them is a
/// no-op): the latest ones.
const REMEMBERED_OCCURRENCES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

/// What an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertDetails {
    /// `meter_over_voltage`, `relay_command_timeout`, …
    pub kind: String,
    pub severity: Severity,
    /// What it concerns (`meter:ACR-1`, `product:P1@W1`).
    pub subject: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AlertCommand {
    Raise {
        alert_id: Id,
        details: AlertDetails,
        /// The occurrence (a device message's meter + type + timestamp);
        /// raising the same one again changes nothing.
        occurrence: String,
        at: DateTime<Utc>,
    },
    Acknowledge {
        by: String,
        at: DateTime<Utc>,
    },
    Resolve {
        by: String,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    /// A condition holds (stock at or below its reorder level, a meter
    /// silent): opens the alert unless it is open already. Unlike
    /// [`AlertCommand::Raise`] it counts no occurrence, so checking the
    /// same condition again changes nothing.
    Ensure {
        alert_id: Id,
        details: AlertDetails,
        at: DateTime<Utc>,
    },
    /// The condition went away: resolves the alert if it is open, does
    /// nothing otherwise (never raised, or already resolved).
    Clear {
        reason: String,
        at: DateTime<Utc>,
    },
}

/// Who resolves an alert whose cause went away.
pub const CLEARED_BY: &str = "system";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AlertEvent {
    AlertRaised {
        alert_id: Id,
        #[serde(flatten)]
        details: AlertDetails,
        occurrence: String,
        at: DateTime<Utc>,
    },
    /// The cause happened again while the alert was open.
    AlertRepeated {
        alert_id: Id,
        occurrence: String,
        message: String,
        at: DateTime<Utc>,
    },
    AlertAcknowledged {
        alert_id: Id,
        by: String,
        at: DateTime<Utc>,
    },
    AlertResolved {
        alert_id: Id,
        by: String,
        reason: Option<String>,
        at: DateTime<Utc>,
    },
}

impl AlertEvent {
    pub fn alert_id(&self) -> &Id {
        match self {
            AlertEvent::AlertRaised { alert_id, .. }
            | AlertEvent::AlertRepeated { alert_id, .. }
            | AlertEvent::AlertAcknowledged { alert_id, .. }
            | AlertEvent::AlertResolved { alert_id, .. } => alert_id,
        }
    }
}

impl DomainEvent for AlertEvent {
    fn event_type(&self) -> String {
        match self {
            AlertEvent::AlertRaised { .. } => "AlertRaised",
            AlertEvent::AlertRepeated { .. } => "AlertRepeated",
            AlertEvent::AlertAcknowledged { .. } => "AlertAcknowledged",
            AlertEvent::AlertResolved { .. } => "AlertResolved",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        EVENT_VERSION_1.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    #[error("no such alert")]
    NotRaised,
    #[error("the alert is resolved")]
    Resolved,
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    #[default]
    Active,
    Acknowledged,
    Resolved,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    alert_id: Option<Id>,
    status: AlertStatus,
    occurrences: Vec<String>,
}

impl Alert {
    /// Raised and not resolved (active or acknowledged).
    pub fn is_open(&self) -> bool {
        self.alert_id.is_some() && self.status != AlertStatus::Resolved
    }
}

impl Aggregate for Alert {
    const TYPE: &'static str = "Alert";
    type Command = AlertCommand;
    type Event = AlertEvent;
    type Error = AlertError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            AlertCommand::Raise {
                alert_id,
                details,
                occurrence,
                at,
            } => {
                if self.occurrences.contains(&occurrence) {
                    return Ok(());
                }
                match (&self.alert_id, self.status) {
                    (Some(_), AlertStatus::Active | AlertStatus::Acknowledged) => {
                        AlertEvent::AlertRepeated {
                            alert_id,
                            occurrence,
                            message: details.message,
                            at,
                        }
                    }
                    _ => AlertEvent::AlertRaised {
                        alert_id,
                        details,
                        occurrence,
                        at,
                    },
                }
            }
            AlertCommand::Acknowledge { by, at } => {
                let alert_id = self.alert_id.clone().ok_or(AlertError::NotRaised)?;
                match self.status {
                    AlertStatus::Active => AlertEvent::AlertAcknowledged { alert_id, by, at },
                    AlertStatus::Acknowledged => return Ok(()),
                    AlertStatus::Resolved => return Err(AlertError::Resolved),
                }
            }
            AlertCommand::Resolve { by, reason, at } => {
                let alert_id = self.alert_id.clone().ok_or(AlertError::NotRaised)?;
                if self.status == AlertStatus::Resolved {
                    return Ok(());
                }
                AlertEvent::AlertResolved {
                    alert_id,
                    by,
                    reason,
                    at,
                }
            }
            AlertCommand::Ensure {
                alert_id,
                details,
                at,
            } => {
                if self.is_open() {
                    return Ok(());
                }
                AlertEvent::AlertRaised {
                    alert_id,
                    details,
                    occurrence: format!("condition@{}", at.to_rfc3339()),
                    at,
                }
            }
            AlertCommand::Clear { reason, at } => {
                let Some(alert_id) = self.alert_id.clone().filter(|_| self.is_open()) else {
                    return Ok(());
                };
                AlertEvent::AlertResolved {
                    alert_id,
                    by: CLEARED_BY.to_string(),
                    reason: Some(reason),
                    at,
                }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let occurrence = match event {
            AlertEvent::AlertRaised {
                alert_id,
                occurrence,
                ..
            } => {
                self.alert_id = Some(alert_id);
                self.status = AlertStatus::Active;
                Some(occurrence)
            }
            AlertEvent::AlertRepeated { occurrence, .. } => Some(occurrence),
            AlertEvent::AlertAcknowledged { .. } => {
                self.status = AlertStatus::Acknowledged;
                None
            }
            AlertEvent::AlertResolved { .. } => {
                self.status = AlertStatus::Resolved;
                None
            }
        };
        if let Some(occurrence) = occurrence {
            self.occurrences.push(occurrence);
            if self.occurrences.len() > REMEMBERED_OCCURRENCES {
                self.occurrences.remove(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type AlertTest = TestFramework<Alert>;

    fn id() -> Id {
        Id::parse("meter_over_voltage:ACR-1").expect("id")
    }

    fn at() -> DateTime<Utc> {
        "2024-12-15T10:30:00Z".parse().expect("time")
    }

    fn details() -> AlertDetails {
        AlertDetails {
            kind: "meter_over_voltage".into(),
            severity: Severity::Warning,
            subject: "meter:ACR-1".into(),
            message: "Voltage exceeded threshold".into(),
        }
    }

    fn raise(occurrence: &str) -> AlertCommand {
        AlertCommand::Raise {
            alert_id: id(),
            details: details(),
            occurrence: occurrence.into(),
            at: at(),
        }
    }

    fn raised(occurrence: &str) -> AlertEvent {
        AlertEvent::AlertRaised {
            alert_id: id(),
            details: details(),
            occurrence: occurrence.into(),
            at: at(),
        }
    }

    #[test]
    fn the_same_message_twice_raises_once_and_another_occurrence_only_counts() {
        AlertTest::with(())
            .given(vec![raised("o-1")])
            .when(raise("o-1"))
            .then_expect_events(vec![]);
        AlertTest::with(())
            .given(vec![raised("o-1")])
            .when(raise("o-2"))
            .then_expect_events(vec![AlertEvent::AlertRepeated {
                alert_id: id(),
                occurrence: "o-2".into(),
                message: "Voltage exceeded threshold".into(),
                at: at(),
            }]);
    }

    #[test]
    fn once_resolved_the_next_occurrence_opens_it_again() {
        let resolved = AlertEvent::AlertResolved {
            alert_id: id(),
            by: "user:ops".into(),
            reason: None,
            at: at(),
        };
        AlertTest::with(())
            .given(vec![raised("o-1"), resolved.clone()])
            .when(raise("o-2"))
            .then_expect_events(vec![raised("o-2")]);
        AlertTest::with(())
            .given(vec![raised("o-1"), resolved])
            .when(AlertCommand::Acknowledge {
                by: "user:ops".into(),
                at: at(),
            })
            .then_expect_error(AlertError::Resolved);
    }

    #[test]
    fn a_condition_opens_the_alert_once_and_clears_it_when_it_goes_away() {
        let ensure = || AlertCommand::Ensure {
            alert_id: id(),
            details: details(),
            at: at(),
        };
        let opened = AlertEvent::AlertRaised {
            alert_id: id(),
            details: details(),
            occurrence: format!("condition@{}", at().to_rfc3339()),
            at: at(),
        };
        let clear = || AlertCommand::Clear {
            reason: "back above the reorder level".into(),
            at: at(),
        };
        let cleared = AlertEvent::AlertResolved {
            alert_id: id(),
            by: CLEARED_BY.into(),
            reason: Some("back above the reorder level".into()),
            at: at(),
        };
        AlertTest::with(())
            .given_no_previous_events()
            .when(ensure())
            .then_expect_events(vec![opened.clone()]);
        AlertTest::with(())
            .given(vec![opened.clone()])
            .when(ensure())
            .then_expect_events(vec![]);
        AlertTest::with(())
            .given(vec![opened.clone()])
            .when(clear())
            .then_expect_events(vec![cleared.clone()]);
        AlertTest::with(())
            .given_no_previous_events()
            .when(clear())
            .then_expect_events(vec![]);
        AlertTest::with(())
            .given(vec![opened.clone(), cleared.clone()])
            .when(clear())
            .then_expect_events(vec![]);
        AlertTest::with(())
            .given(vec![opened.clone(), cleared])
            .when(ensure())
            .then_expect_events(vec![opened]);
    }
}
