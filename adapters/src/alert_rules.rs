//! The alert rules (a reactor): what happens raises alerts. A device alarm
//! (`MeterAlertRaised`) raises `meter_<alert_type>` for its meter, once per
//! (meter, type, instant); a relay command that timed out raises
//! `relay_command_timeout` for its meter. One alert stream per cause, so a
//! cause raises one alert until it is resolved (later occurrences count).

use cqrs_es::Aggregate;
use karvon_domain::alert::{AlertCommand, AlertDetails, Severity};
use karvon_domain::ids::alert_stream_id;
use karvon_domain::meter::{Meter, MeterEvent};
use karvon_domain::{Id, TenantId};
use karvon_projections::names;

use crate::StorageError;
use crate::feed::FeedEvent;
use crate::reactions::{Reaction, caused_by};
use crate::read_models::decode;
use crate::runner::Reactor;

pub struct AlertRules;

impl Reactor for AlertRules {
    fn name(&self) -> &'static str {
        names::ALERT_RULES
    }

    fn react(&self, event: &FeedEvent) -> Result<Vec<Reaction>, StorageError> {
        if event.aggregate_type != Meter::TYPE {
            return Ok(Vec::new());
        }
        let raise = match decode::<MeterEvent>(event)? {
            MeterEvent::MeterAlertRaised { meter_id, alert } => {
                let kind = format!("meter_{}", clean(&alert.alert_type));
                let severity = match alert.severity.as_deref() {
                    Some("critical") => Severity::Critical,
                    Some("info") => Severity::Info,
                    _ => Severity::Warning,
                };
                let message = alert.message.clone().unwrap_or_else(|| {
                    format!(
                        "{} (value {}, threshold {})",
                        alert.alert_type,
                        alert.value.map_or("-".to_string(), |v| v.to_string()),
                        alert.threshold.map_or("-".to_string(), |v| v.to_string())
                    )
                });
                Some((
                    kind,
                    severity,
                    meter_id,
                    message,
                    format!("{}@{}", alert.alert_type, alert.at.to_rfc3339()),
                    alert.at,
                ))
            }
            MeterEvent::RelayCommandTimedOut {
                meter_id,
                command_id,
                at,
            } => Some((
                "relay_command_timeout".to_string(),
                Severity::Warning,
                meter_id,
                format!("relay command {command_id} was not confirmed in time"),
                command_id,
                at,
            )),
            _ => None,
        };
        let Some((kind, severity, meter_id, message, occurrence, at)) = raise else {
            return Ok(Vec::new());
        };
        let tenant = TenantId::parse(event.metadata.tenant_id.clone())
            .map_err(|error| StorageError::Corrupt(format!("tenant id: {error}")))?;
        let alert_id = alert_id(&kind, meter_id.as_str())?;
        Ok(vec![Reaction::Alert {
            stream: alert_stream_id(&tenant, &alert_id),
            command: AlertCommand::Raise {
                alert_id,
                details: AlertDetails {
                    kind,
                    severity,
                    subject: format!("meter:{meter_id}"),
                    message,
                },
                occurrence,
                at,
            },
            metadata: caused_by(event, names::ALERT_RULES, None),
        }])
    }
}

/// A device's alert type as a kind: `[a-z0-9_]`, at most 40 characters.
fn clean(alert_type: &str) -> String {
    alert_type
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

/// The alert of a cause: `<kind>:<subject>`.
fn alert_id(kind: &str, subject: &str) -> Result<Id, StorageError> {
    Id::parse(format!("{kind}:{subject}"))
        .or_else(|_| Id::parse(format!("{}:{}", &kind[..kind.len().min(20)], subject)))
        .map_err(|error| StorageError::Corrupt(format!("alert id: {error}")))
}
