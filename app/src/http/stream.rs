//! `GET /api/v1/stream`: Server-Sent Events of the caller's tenant (scope
//! `read`) — `event: alert` (the alert as `GET /api/v1/alerts` shows it),
//! `event: reading` (a meter reading as `/meters/{id}/readings` shows it)
//! and `event: event` (any other event). Each carries `id: <feed position
//! token>`; a client that reconnects with `Last-Event-ID` resumes after
//! it. Driven by the settled feed, so it works with any number of API
//! instances; a comment heartbeat goes out every 15 s.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

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
/// Events read per look.
const BATCH: i64 = 500;

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
    let follower = Follower {
        state,
        tenant: principal.tenant.to_string(),
        after,
        ready: VecDeque::new(),
    };
    let events = futures::stream::unfold(follower, |mut follower| async move {
        let event = follower.next().await;
        Some((Ok(event), follower))
    });
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("heartbeat"),
    ))
}

struct Follower {
    state: AppState,
    tenant: String,
    after: Position,
    ready: VecDeque<Event>,
}

impl Follower {
    /// The next event for the client, waiting for one as long as it takes.
    async fn next(&mut self) -> Event {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return event;
            }
            match audit::tenant_feed(&self.state.db, &self.tenant, self.after, BATCH).await {
                Ok(events) if !events.is_empty() => {
                    for event in events {
                        self.after = event.position;
                        let sse = self.render(&event).await;
                        self.ready.push_back(sse);
                    }
                }
                Ok(_) => tokio::time::sleep(POLL).await,
                Err(error) => {
                    tracing::warn!(%error, "the event stream could not read the feed");
                    tokio::time::sleep(POLL * 5).await;
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
