//! The NATS relay: a [`Publisher`] that sends every committed event to
//! JetStream stream `KARVON_EVENTS` (SPEC §1 "NATS").
//!
//! - Subject `karvon.<tenant>.<aggregate_type>.<event_type>`; a `.` inside
//!   a tenant id (ids may hold one) is sent as `%2E`, so every subject has
//!   exactly four tokens and `karvon.<tenant>.>` selects one tenant.
//! - Body: a CloudEvents 1.0 JSON event ([`cloud_event`]).
//! - Header `Nats-Msg-Id: <aggregate_type>:<aggregate_id>:<sequence>`:
//!   JetStream drops a message whose id it saw within the stream's
//!   de-duplication window ([`DUPLICATE_WINDOW`]).
//! - A batch is published pipelined, at most [`MAX_IN_FLIGHT`] messages
//!   awaiting their acknowledgement; the runner moves the checkpoint only
//!   after every acknowledgement of the batch, so a crash re-sends at most
//!   one batch, and the window drops those repeats.
//! - NATS unreachable: the step fails as `Unavailable`, the runner backs
//!   off and tries again from the checkpoint; the API does not notice, and
//!   the backlog drains in feed order (so in order per aggregate) when NATS
//!   is back.
//!
//! Metrics: `karvon_events_published_total` (acknowledged publishes); the
//! relay's lag is `karvon_projection_lag_events{consumer="nats_relay"}`
//! like every consumer's.
//!
//! The event store stays the only source of truth: JetStream may lose
//! acknowledged messages on power loss (see the research notes), so
//! `karvon relay republish --from <position>` re-feeds the stream by moving
//! this publisher's checkpoint back.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use karvon_projections::names;
use serde_json::json;
use tokio::sync::Mutex;

use crate::StorageError;
use crate::feed::FeedEvent;
use crate::runner::Publisher;

/// The stream every event goes to.
pub const STREAM: &str = "KARVON_EVENTS";

/// How long JetStream remembers a message id. It must cover what a relay
/// can send twice: one batch after a crash between the acknowledgements
/// and the checkpoint, re-sent when the relay (or its standby) next leads —
/// seconds normally, a few minutes with a slow restart. Ten minutes covers
/// that with room; a longer window costs broker memory per message (at
/// 1,000 events/s, 600,000 ids held). Repeats older than the window (a
/// `republish`) are for subscribers to drop by event id, which the
/// documented subscriber pattern does.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// Messages awaiting their acknowledgement at once.
pub const MAX_IN_FLIGHT: usize = 256;

/// Publishes the feed to NATS JetStream.
pub struct NatsRelay {
    url: String,
    /// Connected and the stream ensured; `None` until the first success.
    context: Mutex<Option<jetstream::Context>>,
}

impl NatsRelay {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            context: Mutex::new(None),
        }
    }

    async fn context(&self) -> Result<jetstream::Context, StorageError> {
        let mut cached = self.context.lock().await;
        if let Some(context) = cached.as_ref() {
            return Ok(context.clone());
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .request_timeout(Some(Duration::from_secs(10)))
            .connect(self.url.as_str())
            .await
            .map_err(|error| unavailable("connecting to NATS", error))?;
        let context = jetstream::new(client);
        context
            .create_or_update_stream(stream::Config {
                name: STREAM.to_string(),
                subjects: vec!["karvon.>".to_string()],
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                ..stream::Config::default()
            })
            .await
            .map_err(|error| unavailable("creating or updating stream KARVON_EVENTS", error))?;
        *cached = Some(context.clone());
        Ok(context)
    }
}

fn unavailable(doing: &str, error: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("{doing}: {error}"))
}

/// A subject token for a tenant id: `.` would split the token.
fn subject_token(text: &str) -> String {
    text.replace('.', "%2E")
}

/// The subject of an event.
pub fn subject(event: &FeedEvent) -> String {
    format!(
        "karvon.{}.{}.{}",
        subject_token(&event.metadata.tenant_id),
        event.aggregate_type,
        event.event_type
    )
}

/// The JetStream de-duplication id of an event.
pub fn message_id(event: &FeedEvent) -> String {
    format!(
        "{}:{}:{}",
        event.aggregate_type, event.aggregate_id, event.sequence
    )
}

/// The event as CloudEvents 1.0 JSON. Karvon's metadata travels as
/// extension attributes (lowercase letters and digits, as the spec asks):
/// `tenant`, `aggregatetype`, `aggregateid`, `sequence`, `position` (the
/// feed token), `eventversion`, `correlationid`, `causationid` (when
/// there is one), `actor`.
pub fn cloud_event(event: &FeedEvent) -> serde_json::Value {
    let metadata = &event.metadata;
    let mut body = json!({
        "specversion": "1.0",
        "id": event.event_id.to_string(),
        "source": format!("/karvon/{}", metadata.tenant_id),
        "type": format!("karvon.{}.{}", event.aggregate_type, event.event_type),
        "subject": event.aggregate_id,
        "time": metadata.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "datacontenttype": "application/json",
        "data": event.payload,
        "tenant": metadata.tenant_id,
        "aggregatetype": event.aggregate_type,
        "aggregateid": event.aggregate_id,
        "sequence": event.sequence,
        "position": event.position.to_string(),
        "eventversion": event.event_version,
        "correlationid": metadata.correlation_id,
        "actor": metadata.actor,
    });
    if let Some(causation) = &metadata.causation_id {
        body["causationid"] = json!(causation);
    }
    body
}

#[async_trait::async_trait]
impl Publisher for NatsRelay {
    fn name(&self) -> &'static str {
        names::NATS_RELAY
    }

    async fn publish(&self, events: &[FeedEvent]) -> Result<(), StorageError> {
        let context = self.context().await?;
        for chunk in events.chunks(MAX_IN_FLIGHT) {
            let mut acks = Vec::with_capacity(chunk.len());
            for event in chunk {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    message_id(event).as_str(),
                );
                let body = serde_json::to_vec(&cloud_event(event))
                    .map_err(|error| StorageError::Corrupt(format!("event body: {error}")))?;
                let ack = context
                    .publish_with_headers(subject(event), headers, body.into())
                    .await
                    .map_err(|error| unavailable("publishing", error))?;
                acks.push(ack);
            }
            for ack in acks {
                ack.await
                    .map_err(|error| unavailable("awaiting a publish acknowledgement", error))?;
            }
            metrics::counter!("karvon_events_published_total").increment(chunk.len() as u64);
        }
        Ok(())
    }
}
