//! What every event carries besides its payload.
//!
//! cqrs-es stores metadata as a flat string map; [`EventMetadata`] is its
//! typed face. `event_id` and `recorded_at` are not in the map: the event
//! store fills them (UUIDv7 and commit-time clock) as column defaults.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Http,
    Webhook,
    Mqtt,
    OneC,
    Regos,
    System,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Http => "http",
            Source::Webhook => "webhook",
            Source::Mqtt => "mqtt",
            Source::OneC => "1c",
            Source::Regos => "regos",
            Source::System => "system",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    pub tenant_id: String,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub actor: String,
    pub correlation_id: String,
    pub causation_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// Fingerprint of the request behind a keyed command, so a key reused
    /// with another body is told apart from a retry.
    pub request_hash: Option<String>,
    /// The id a command answered with, so a retried keyed command can
    /// answer the same without running again.
    pub response_id: Option<String>,
}

impl EventMetadata {
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("tenant_id".to_string(), self.tenant_id.clone()),
            ("occurred_at".to_string(), self.occurred_at.to_rfc3339()),
            ("source".to_string(), self.source.clone()),
            ("actor".to_string(), self.actor.clone()),
            ("correlation_id".to_string(), self.correlation_id.clone()),
        ]);
        let optional = [
            ("causation_id", &self.causation_id),
            ("idempotency_key", &self.idempotency_key),
            ("request_hash", &self.request_hash),
            ("response_id", &self.response_id),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                map.insert(key.to_string(), value.clone());
            }
        }
        map
    }

    /// Reads the stored map back; `fallback_time` stands in for a missing
    /// or unreadable `occurred_at` (the event's recorded time). `None`
    /// without a tenant: events never default theirs.
    pub fn from_map(map: &HashMap<String, String>, fallback_time: DateTime<Utc>) -> Option<Self> {
        let get = |key: &str| map.get(key).cloned();
        Some(Self {
            tenant_id: get("tenant_id").filter(|tenant| !tenant.is_empty())?,
            occurred_at: map
                .get("occurred_at")
                .and_then(|value| DateTime::parse_from_rfc3339(value).ok())
                .map(|value| value.with_timezone(&Utc))
                .unwrap_or(fallback_time),
            source: get("source").unwrap_or_else(|| Source::System.as_str().to_string()),
            actor: get("actor").unwrap_or_default(),
            correlation_id: get("correlation_id").unwrap_or_default(),
            causation_id: get("causation_id"),
            idempotency_key: get("idempotency_key"),
            request_hash: get("request_hash"),
            response_id: get("response_id"),
        })
    }
}
