//! The alert rules (a reactor): what happens raises alerts. A device alarm
//! (`MeterAlertRaised`) raises `meter_<alert_type>` for its meter, once per
//! (meter, type, instant); a reading whose register went down raises
//! `meter_register_backwards`; a relay command that timed out raises
//! `relay_command_timeout` for its meter; a sale naming a product the
//! catalogue does not know raises `unknown_product` for that product; a
//! failed import raises `import_failed` for its job. One alert stream per
//! cause, so a cause raises one alert until it is resolved (later
//! occurrences count).

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use karvon_domain::alert::{AlertCommand, AlertDetails, Severity};
use karvon_domain::ids::alert_stream_id;
use karvon_domain::import_job::{ImportJob, ImportJobEvent};
use karvon_domain::meter::{Meter, MeterEvent};
use karvon_domain::sale::{Sale, SaleEvent};
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
        let raises = match event.aggregate_type.as_str() {
            t if t == Meter::TYPE => meter_alerts(decode::<MeterEvent>(event)?),
            t if t == Sale::TYPE => sale_alerts(decode::<SaleEvent>(event)?),
            t if t == ImportJob::TYPE => job_alerts(decode::<ImportJobEvent>(event)?),
            _ => Vec::new(),
        };
        if raises.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = TenantId::parse(event.metadata.tenant_id.clone())
            .map_err(|error| StorageError::Corrupt(format!("tenant id: {error}")))?;
        raises
            .into_iter()
            .map(|raise| {
                let alert_id = alert_id(&raise.kind, &raise.subject)?;
                Ok(Reaction::Alert {
                    stream: alert_stream_id(&tenant, &alert_id),
                    command: AlertCommand::Raise {
                        alert_id,
                        details: AlertDetails {
                            kind: raise.kind,
                            severity: raise.severity,
                            subject: raise.subject,
                            message: raise.message,
                        },
                        occurrence: raise.occurrence,
                        at: raise.at,
                    },
                    metadata: caused_by(event, names::ALERT_RULES, None),
                })
            })
            .collect()
    }
}

/// An alert to raise.
struct Raise {
    kind: String,
    severity: Severity,
    /// `meter:<id>`, `product:<id>`, `job:<id>`.
    subject: String,
    message: String,
    occurrence: String,
    at: DateTime<Utc>,
}

fn meter_alerts(event: MeterEvent) -> Vec<Raise> {
    match event {
        MeterEvent::MeterAlertRaised { meter_id, alert } => {
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
            vec![Raise {
                kind: format!("meter_{}", clean(&alert.alert_type)),
                severity,
                subject: format!("meter:{meter_id}"),
                message,
                occurrence: format!("{}@{}", alert.alert_type, alert.at.to_rfc3339()),
                at: alert.at,
            }]
        }
        MeterEvent::MeterReadingRecorded {
            meter_id,
            reading,
            backwards: true,
            ..
        } => vec![Raise {
            kind: "meter_register_backwards".to_string(),
            severity: Severity::Warning,
            subject: format!("meter:{meter_id}"),
            message: format!(
                "the register went down to {} at {}",
                reading
                    .values
                    .reading
                    .map_or("-".to_string(), |value| value.to_string()),
                reading.at.to_rfc3339()
            ),
            occurrence: reading.at.to_rfc3339(),
            at: reading.at,
        }],
        MeterEvent::RelayCommandTimedOut {
            meter_id,
            command_id,
            at,
        } => vec![Raise {
            kind: "relay_command_timeout".to_string(),
            severity: Severity::Warning,
            subject: format!("meter:{meter_id}"),
            message: format!("relay command {command_id} was not confirmed in time"),
            occurrence: command_id,
            at,
        }],
        _ => Vec::new(),
    }
}

/// Each product a recorded sale (or return) names that the catalogue did
/// not know.
fn sale_alerts(event: SaleEvent) -> Vec<Raise> {
    let (sale_id, details, unknown) = match event {
        SaleEvent::SaleRecorded {
            sale_id,
            details,
            unknown_products,
        }
        | SaleEvent::ReturnRecorded {
            sale_id,
            details,
            unknown_products,
        }
        | SaleEvent::SaleCorrected {
            sale_id,
            details,
            unknown_products,
            ..
        } => (sale_id, details, unknown_products),
        SaleEvent::SaleRefunded { .. } => return Vec::new(),
    };
    unknown
        .into_iter()
        .map(|product| Raise {
            kind: "unknown_product".to_string(),
            severity: Severity::Warning,
            subject: format!("product:{product}"),
            message: format!(
                "sale {sale_id} names product {product}, which the catalogue does not know"
            ),
            occurrence: sale_id.to_string(),
            at: details.occurred_at,
        })
        .collect()
}

fn job_alerts(event: ImportJobEvent) -> Vec<Raise> {
    match event {
        ImportJobEvent::ImportFailed {
            job_id,
            message,
            finished_at,
        } => vec![Raise {
            kind: "import_failed".to_string(),
            severity: Severity::Critical,
            subject: format!("job:{job_id}"),
            message,
            occurrence: job_id.to_string(),
            at: finished_at,
        }],
        _ => Vec::new(),
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

/// The alert of a cause: `<kind>:<subject>`, or (too long for an id)
/// the kind and a fingerprint of the subject.
fn alert_id(kind: &str, subject: &str) -> Result<Id, StorageError> {
    Id::parse(format!("{kind}:{subject}"))
        .or_else(|_| {
            let fingerprint = subject
                .bytes()
                .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
                    (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
                });
            Id::parse(format!(
                "{}:{fingerprint:016x}",
                &kind[..kind.len().min(40)]
            ))
        })
        .map_err(|error| StorageError::Corrupt(format!("alert id: {error}")))
}
