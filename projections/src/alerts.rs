//! Alerts: one row per alert (per cause), shaped like the API answer.

use chrono::{DateTime, Utc};
use karvon_domain::alert::{AlertEvent, AlertStatus, Severity};

#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    pub tenant_id: String,
    pub alert_id: String,
    pub kind: String,
    pub severity: Severity,
    pub status: AlertStatus,
    pub subject: String,
    pub message: String,
    /// When it was (last) opened.
    pub raised_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// Times the cause happened since it was opened.
    pub occurrences: i64,
    pub note: Option<String>,
}

/// Folds an alert event into the alert's row (`None` before it is raised).
pub fn apply(row: Option<AlertRow>, tenant_id: &str, event: &AlertEvent) -> Option<AlertRow> {
    match event {
        AlertEvent::AlertRaised {
            alert_id,
            details,
            at,
            ..
        } => Some(AlertRow {
            tenant_id: tenant_id.to_string(),
            alert_id: alert_id.to_string(),
            kind: details.kind.clone(),
            severity: details.severity,
            status: AlertStatus::Active,
            subject: details.subject.clone(),
            message: details.message.clone(),
            raised_at: *at,
            acknowledged_at: None,
            resolved_at: None,
            occurrences: 1,
            note: None,
        }),
        AlertEvent::AlertRepeated { message, .. } => row.map(|row| AlertRow {
            occurrences: row.occurrences + 1,
            message: message.clone(),
            ..row
        }),
        AlertEvent::AlertAcknowledged { at, .. } => row.map(|row| AlertRow {
            status: AlertStatus::Acknowledged,
            acknowledged_at: Some(*at),
            ..row
        }),
        AlertEvent::AlertResolved { at, reason, .. } => row.map(|row| AlertRow {
            status: AlertStatus::Resolved,
            resolved_at: Some(*at),
            note: reason.clone().or(row.note),
            ..row
        }),
    }
}
