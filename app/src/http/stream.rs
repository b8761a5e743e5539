//! `GET /api/v1/stream`: Server-Sent Events of the caller's tenant (scope
//! `read`) — `event: alert` (the alert as `GET /api/v1/alerts` shows it),
//! `event: reading` (a meter reading as `/meters/{id}/readings` shows it)
//! and `event: event` (any other event). Each carries `id: <feed position
//! token>`; a client that reconnects with `Last-Event-ID` resumes after
//! it. Driven by the settled feed, so it works with any number of API
//! instances; a comment heartbeat goes out every 15 s.
//!
//! One reader per instance ([`StreamHub`]) follows the settled feed of
//! every tenant and fans each batch out over a broadcast channel; a stream
//! reads the feed itself only to catch up (from `Last-Event-ID`, or after
//! falling behind the channel), then takes its tenant's events from the
//! channel. Streams are bounded: [`PER_KEY`] per credential, [`PER_TENANT`]
//! per tenant, together at most half of the connection limit (so health
//! checks and ordinary requests are always served; more answer 429), and
//! each ends after its lifetime (clients resume with `Last-Event-ID`).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use karvon_adapters::db::Db;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use karvon_adapters::audit;
use karvon_adapters::feed::FeedEvent;
use karvon_adapters::read_models::alerts;
use karvon_adapters::runner;
use karvon_domain::meter::MeterEvent;
use karvon_projections::meters::reading_row;
use karvon_projections::{Position, PositionToken, names};
use serde_json::{Value, json};

use super::AppState;
use super::access::ReadAccess;
use super::alerts::AlertView;
use super::error::{ApiError, QueryErrors};
use super::meters::ReadingView;

pub fn routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::new().routes(utoipa_axum::routes!(stream))
}

/// How often the feed is looked at for new events.
const POLL: Duration = Duration::from_millis(200);
/// How often an idle hub (no stream open) notes where the feed stands.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Events read per look.
const BATCH: i64 = 500;
/// Open streams per credential (API key or user) at most.
pub const PER_KEY: usize = 4;
/// Open streams per tenant at most.
pub const PER_TENANT: usize = 16;
/// Events the broadcast channel holds for a slow stream before it has to
/// catch up from the store.
const CHANNEL: usize = 4096;

/// The instance's one feed reader for every live stream, with the counts
/// that bound them.
pub struct StreamHub {
    events: broadcast::Sender<Arc<FeedEvent>>,
    /// Stream slots: half of the connection limit.
    slots: Arc<Semaphore>,
    /// Open streams per `key:<actor>` and per `tenant:<id>`.
    open: Mutex<HashMap<String, usize>>,
    /// How long one stream stays open.
    pub lifetime: Duration,
    /// Set when the server shuts down: every stream ends.
    closed: tokio::sync::watch::Sender<bool>,
}

impl StreamHub {
    /// A hub whose streams use at most `slots` connections; starts its
    /// reader on the current runtime (it stops when the hub is dropped).
    pub fn start(db: Db, slots: usize, lifetime: Duration) -> Arc<Self> {
        let (events, _) = broadcast::channel(CHANNEL);
        let hub = Arc::new(Self {
            events,
            slots: Arc::new(Semaphore::new(slots.max(1))),
            open: Mutex::default(),
            lifetime,
            closed: tokio::sync::watch::channel(false).0,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(read_feed(db, Arc::downgrade(&hub)));
        }
        hub
    }

    /// Ends every open stream (and refuses new ones): the server stops.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// A place for one more stream of `actor` in `tenant`, or 429.
    fn admit(self: &Arc<Self>, actor: &str, tenant: &str) -> Result<Admitted, ApiError> {
        let busy = |why: &str| {
            let mut error = ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("{why}; close one or retry later"),
            );
            error.retry_after = Some(5);
            error
        };
        if *self.closed.borrow() {
            return Err(busy("the server is shutting down"));
        }
        let (key, tenant) = (format!("key:{actor}"), format!("tenant:{tenant}"));
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.get(&key).copied().unwrap_or(0) >= PER_KEY {
            return Err(busy(&format!("this credential has {PER_KEY} streams open")));
        }
        if open.get(&tenant).copied().unwrap_or(0) >= PER_TENANT {
            return Err(busy(&format!("this tenant has {PER_TENANT} streams open")));
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Err(busy("the server has as many streams open as it serves"));
        };
        *open.entry(key.clone()).or_default() += 1;
        *open.entry(tenant.clone()).or_default() += 1;
        Ok(Admitted {
            hub: self.clone(),
            subjects: [key, tenant],
            _slot: slot,
        })
    }
}

/// A stream's place; gives it back when the stream ends.
struct Admitted {
    hub: Arc<StreamHub>,
    subjects: [String; 2],
    _slot: OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self
            .hub
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for subject in &self.subjects {
            if let Some(count) = open.get_mut(subject) {
                *count -= 1;
                if *count == 0 {
                    open.remove(subject);
                }
            }
        }
    }
}

/// The hub's reader: while streams are open, sends every settled event
/// (all tenants, feed order) to the channel; while none is, only notes
/// where the feed stands — read before looking for streams, so a stream
/// that opens meanwhile catches up past it by itself.
async fn read_feed(db: Db, hub: std::sync::Weak<StreamHub>) {
    let mut after = loop {
        match audit::head(&db).await {
            Ok(head) => break head,
            Err(error) => {
                tracing::warn!(%error, "the stream hub could not read the feed's head");
                tokio::time::sleep(POLL * 5).await;
            }
        }
    };
    loop {
        let Some(events) = hub.upgrade().map(|hub| hub.events.clone()) else {
            return;
        };
        if events.receiver_count() == 0 {
            match audit::head(&db).await {
                Ok(head) if events.receiver_count() == 0 => after = head,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "the stream hub could not read the feed's head")
                }
            }
            drop(events);
            tokio::time::sleep(IDLE_POLL).await;
            continue;
        }
        match audit::settled_feed(&db, after, BATCH).await {
            Ok(batch) if !batch.is_empty() => {
                for event in batch {
                    after = event.position;
                    let _ = events.send(Arc::new(event));
                }
            }
            Ok(_) => {
                drop(events);
                tokio::time::sleep(POLL).await;
            }
            Err(error) => {
                tracing::warn!(%error, "the stream hub could not read the feed");
                drop(events);
                tokio::time::sleep(POLL * 5).await;
            }
        }
    }
}

#[utoipa::path(get, path = "/api/v1/stream", tag = "stream",
    summary = "Server-Sent Events: alerts, meter readings and events of the caller's tenant",
    params(("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream"), QueryErrors),
    security(("bearer" = [])))]
pub async fn stream(
    State(state): State<AppState>,
    ReadAccess(principal): ReadAccess,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let after = match headers.get("last-event-id") {
        Some(value) => match value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse::<PositionToken>().ok())
        {
            Some(PositionToken::Feed(position)) => position,
            _ => {
                return Err(ApiError::validation(
                    "Last-Event-ID is not an id this stream sent",
                ));
            }
        },
        None => audit::head(&state.db).await?,
    };
    let admitted = state
        .streams
        .admit(&principal.actor, principal.tenant.as_str())?;
    let deadline = tokio::time::Instant::now() + state.streams.lifetime;
    let closed = state.streams.closed.subscribe();
    let follower = Follower {
        live: state.streams.events.subscribe(),
        catching_up: true,
        state,
        tenant: principal.tenant.to_string(),
        after,
        ready: VecDeque::new(),
        _admitted: admitted,
    };
    let events = futures::stream::unfold(
        (follower, closed),
        move |(mut follower, mut closed)| async move {
            // The stream ends at its deadline or at shutdown; the client
            // resumes with Last-Event-ID.
            let event = tokio::select! {
                event = tokio::time::timeout_at(deadline, follower.next()) => event.ok()?,
                _ = closed.wait_for(|closed| *closed) => return None,
            };
            Some((Ok(event), (follower, closed)))
        },
    );
    // A first comment sends the headers at once: the client knows the
    // stream is open before the first event.
    let opened = futures::stream::once(async { Ok(Event::default().comment("open")) });
    Ok(
        Sse::new(futures::StreamExt::chain(opened, events)).keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("heartbeat"),
        ),
    )
}

struct Follower {
    state: AppState,
    tenant: String,
    /// The last event sent (or the start).
    after: Position,
    ready: VecDeque<Event>,
    /// The hub's channel, subscribed before the first catch-up read, so
    /// every event is either read while catching up or received here.
    live: broadcast::Receiver<Arc<FeedEvent>>,
    /// Reading the store until it has nothing newer (at the start, and
    /// after falling behind the channel).
    catching_up: bool,
    _admitted: Admitted,
}

impl Follower {
    /// The next event for the client, waiting for one as long as it takes.
    async fn next(&mut self) -> Event {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            if self.catching_up {
                match audit::tenant_feed(&self.state.db, &self.tenant, self.after, BATCH).await {
                    Ok(events) if !events.is_empty() => {
                        for event in events {
                            self.after = event.position;
                            let sse = self.render(&event).await;
                            self.ready.push_back(sse);
                        }
                    }
                    Ok(_) => self.catching_up = false,
                    Err(error) => {
                        tracing::warn!(%error, "the event stream could not read the feed");
                        tokio::time::sleep(POLL * 5).await;
                    }
                }
                continue;
            }
            match self.live.recv().await {
                Ok(event) => {
                    // Feed order: what catching up already sent is skipped.
                    if event.position > self.after && event.metadata.tenant_id == self.tenant {
                        self.after = event.position;
                        let sse = self.render(&event).await;
                        self.ready.push_back(sse);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.catching_up = true,
                Err(broadcast::error::RecvError::Closed) => {
                    // The hub is gone (shutting down): read the store.
                    self.catching_up = true;
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    async fn render(&self, event: &FeedEvent) -> Event {
        let id = PositionToken::Feed(event.position).to_string();
        let (kind, data) = match event.aggregate_type.as_str() {
            "Alert" => ("alert", self.alert(event).await),
            "Meter" => {
                let row = serde_json::from_value::<MeterEvent>(event.payload.clone())
                    .ok()
                    .and_then(|payload| reading_row(&self.tenant, &payload));
                match row {
                    Some(row) => {
                        let meter_id = row.meter_id.clone();
                        let mut data =
                            serde_json::to_value(ReadingView::from(row)).unwrap_or(Value::Null);
                        if let Some(data) = data.as_object_mut() {
                            data.insert("meter_id".into(), meter_id.into());
                        }
                        ("reading", data)
                    }
                    None => ("event", plain(event)),
                }
            }
            _ => ("event", plain(event)),
        };
        Event::default().id(id).event(kind).data(data.to_string())
    }

    /// The alert as the alerts endpoint shows it, once the alerts read
    /// model has it (waiting at most 1 s); the event itself otherwise.
    async fn alert(&self, event: &FeedEvent) -> Value {
        let alert_id = event
            .aggregate_id
            .split_once('/')
            .map_or(event.aggregate_id.as_str(), |(_, id)| id);
        let mut wakeup = self.state.wakeup.clone();
        let target = PositionToken::Feed(event.position);
        let applied = runner::wait_until_applied(
            &self.state.db,
            &mut wakeup,
            &[names::ALERTS],
            &target,
            Duration::from_secs(1),
        )
        .await
        .unwrap_or(false);
        if applied {
            if let Ok(mut reader) =
                karvon_adapters::records::tenant_reader(&self.state.db, &self.tenant).await
            {
                let row = alerts::get(&mut reader, &self.tenant, alert_id).await;
                let _ = reader.finish().await;
                if let Ok(Some(row)) = row {
                    if let Ok(view) = serde_json::to_value(AlertView::from(row)) {
                        return view;
                    }
                }
            }
        }
        plain(event)
    }
}

/// An event as the audit endpoints show it.
fn plain(event: &FeedEvent) -> Value {
    json!({
        "event_id": event.event_id,
        "event_type": event.event_type,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
        "recorded_at": event.recorded_at,
        "payload": event.payload,
    })
}
