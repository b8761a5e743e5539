//! The alert rules (a reactor): what happens raises alerts. A device alarm
//! (`MeterAlertRaised`) raises `meter_<alert_type>` for its meter, once per
//! (meter, type, instant); a reading whose register went down raises
//! `meter_register_backwards`, one whose interval consumption is an
//! anomaly `meter_reading_anomaly`; a meter gone silent raises
//! `meter_offline`, cleared when it reports again; a relay command that
//! timed out raises `relay_command_timeout` for its meter; a sale naming a
//! product the catalogue does not know raises `unknown_product` for that
//! product; a failed import raises `import_failed` for its job. Stock
//! movements and reorder-level changes ask for a stock check
//! ([`crate::stock_alerts`]), which opens or clears `low_stock`,
//! `negative_stock`, `expired` and `near_expiry`. One alert stream per
//! cause, so a cause raises one alert until it is resolved (later
//! occurrences count).

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use karvon_domain::alert::{AlertCommand, AlertDetails, Severity};
use karvon_domain::ids::alert_stream_id;
use karvon_domain::import_job::{ImportJob, ImportJobEvent};
use karvon_domain::meter::{Meter, MeterEvent};
use karvon_domain::product::{Product, ProductEvent};
use karvon_domain::sale::{Sale, SaleEvent};
use karvon_domain::stock::{StockEvent, StockItem};
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

    fn aggregate_types(&self) -> crate::feed::Wanted {
        Some(&[
            Meter::TYPE,
            Sale::TYPE,
            ImportJob::TYPE,
            StockItem::TYPE,
            Product::TYPE,
        ])
    }

    fn react(&self, event: &FeedEvent) -> Result<Vec<Reaction>, StorageError> {
        let rules = match event.aggregate_type.as_str() {
            t if t == Meter::TYPE => meter_rules(decode::<MeterEvent>(event)?),
            t if t == Sale::TYPE => sale_alerts(decode::<SaleEvent>(event)?)
                .into_iter()
                .map(Rule::Raise)
                .collect(),
            t if t == ImportJob::TYPE => job_alerts(decode::<ImportJobEvent>(event)?)
                .into_iter()
                .map(Rule::Raise)
                .collect(),
            t if t == StockItem::TYPE => {
                let stock = decode::<StockEvent>(event)?;
                vec![Rule::CheckStock {
                    product_id: stock.product_id().clone(),
                    warehouse_id: Some(stock.warehouse_id().clone()),
                }]
            }
            t if t == Product::TYPE => product_rules(decode::<ProductEvent>(event)?),
            _ => Vec::new(),
        };
        if rules.is_empty() {
            return Ok(Vec::new());
        }
        let tenant = TenantId::parse(event.metadata.tenant_id.clone())
            .map_err(|error| StorageError::Corrupt(format!("tenant id: {error}")))?;
        let metadata = || caused_by(event, names::ALERT_RULES, None);
        rules
            .into_iter()
            .map(|rule| {
                Ok(match rule {
                    Rule::Raise(raise) => {
                        let alert_id = alert_id(&raise.kind, &raise.subject)?;
                        Reaction::Alert {
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
                            metadata: metadata(),
                        }
                    }
                    Rule::Clear {
                        kind,
                        subject,
                        reason,
                        at,
                    } => Reaction::Alert {
                        stream: alert_stream_id(&tenant, &alert_id(kind, &subject)?),
                        command: AlertCommand::Clear { reason, at },
                        metadata: metadata(),
                    },
                    Rule::CheckStock {
                        product_id,
                        warehouse_id,
                    } => Reaction::StockCheck {
                        tenant: tenant.clone(),
                        product_id,
                        warehouse_id,
                        metadata: metadata(),
                    },
                })
            })
            .collect()
    }
}

/// What an event calls for.
enum Rule {
    Raise(Raise),
    /// The cause of `<kind>:<subject>` went away.
    Clear {
        kind: &'static str,
        subject: String,
        reason: String,
        at: DateTime<Utc>,
    },
    /// Judge the stock conditions of a product (at one warehouse, or all).
    CheckStock {
        product_id: Id,
        warehouse_id: Option<Id>,
    },
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

fn meter_rules(event: MeterEvent) -> Vec<Rule> {
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
            vec![Rule::Raise(Raise {
                kind: format!("meter_{}", clean(&alert.alert_type)),
                severity,
                subject: format!("meter:{meter_id}"),
                message,
                occurrence: format!("{}@{}", alert.alert_type, alert.at.to_rfc3339()),
                at: alert.at,
            })]
        }
        MeterEvent::MeterReadingRecorded {
            meter_id,
            reading,
            backwards,
            anomaly,
            ..
        } => {
            let text = |value: Option<rust_decimal::Decimal>| {
                value.map_or("-".to_string(), |value| value.to_string())
            };
            let at = reading.at.to_rfc3339();
            // One warning per (cause, reading instant).
            let raise = |kind: &str, message: String| {
                Rule::Raise(Raise {
                    kind: kind.to_string(),
                    severity: Severity::Warning,
                    subject: format!("meter:{meter_id}"),
                    message,
                    occurrence: at.clone(),
                    at: reading.at,
                })
            };
            let mut rules = Vec::new();
            if backwards {
                rules.push(raise(
                    "meter_register_backwards",
                    format!(
                        "the register went down to {} at {at}",
                        text(reading.values.reading)
                    ),
                ));
            }
            if let Some(anomaly) = anomaly {
                rules.push(raise(
                    "meter_reading_anomaly",
                    format!(
                        "interval consumption {} at {at} is beyond {} ± 3 × {} (the last {} readings)",
                        text(reading.values.consumption),
                        anomaly.mean,
                        anomaly.stddev,
                        anomaly.readings
                    ),
                ));
            }
            rules
        }
        MeterEvent::MeterWentSilent {
            meter_id,
            last_reading_at,
            at,
        } => vec![Rule::Raise(Raise {
            kind: "meter_offline".to_string(),
            severity: Severity::Warning,
            subject: format!("meter:{meter_id}"),
            message: format!("no reading since {}", last_reading_at.to_rfc3339()),
            occurrence: format!("silent@{}", last_reading_at.to_rfc3339()),
            at,
        })],
        MeterEvent::MeterReportingAgain { meter_id, at } => vec![Rule::Clear {
            kind: "meter_offline",
            subject: format!("meter:{meter_id}"),
            reason: format!("the meter reported again at {}", at.to_rfc3339()),
            at,
        }],
        MeterEvent::RelayCommandTimedOut {
            meter_id,
            command_id,
            at,
        } => vec![Rule::Raise(Raise {
            kind: "relay_command_timeout".to_string(),
            severity: Severity::Warning,
            subject: format!("meter:{meter_id}"),
            message: format!("relay command {command_id} was not confirmed in time"),
            occurrence: command_id,
            at,
        })],
        _ => Vec::new(),
    }
}

/// A product's reorder level may have changed: check its stock everywhere
/// (a product registered without one has no level to fall to).
fn product_rules(event: ProductEvent) -> Vec<Rule> {
    match event {
        ProductEvent::ProductRegistered {
            product_id,
            details,
        } if details.reorder_level.is_some() => vec![Rule::CheckStock {
            product_id,
            warehouse_id: None,
        }],
        ProductEvent::ProductUpdated { product_id, .. } => vec![Rule::CheckStock {
            product_id,
            warehouse_id: None,
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
pub(crate) fn alert_id(kind: &str, subject: &str) -> Result<Id, StorageError> {
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
