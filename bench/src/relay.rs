//! The NATS relay against a `nats-server` of the bench's own:
//! - catch-up: events/s published to JetStream from a backlog (the relay's
//!   runner, acks awaited, checkpoint per batch), beside async-nats
//!   publishing the same bodies to a stream of its own without Karvon
//!   (pipelined the same way);
//! - end-to-end lag at a steady 1,000 events/s: from the append's commit to
//!   a core NATS subscriber receiving the event, p50/p99.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use karvon_adapters::audit;
use karvon_adapters::relay::{self, NatsRelay};
use karvon_adapters::runner::{Consumer, Runner, RunnerSettings, session};
use karvon_tests::{Db, NatsServer, TestDb, append_raw_event, append_raw_receipts};
use tokio::sync::{Mutex, watch};

use crate::Latencies;

pub async fn run(db: &TestDb, backlog: i64, seconds: u64) -> anyhow::Result<()> {
    let nats = NatsServer::started().await?;
    let store = db.db().await?;
    store.migrate().await?;
    let mut written = 0;
    let mut warehouse = 0;
    while written < backlog {
        let size = (backlog - written).min(100_000);
        append_raw_receipts(&store, &format!("R{warehouse}"), size, 1_000).await?;
        written += size;
        warehouse += 1;
    }
    karvon_tests::wait_settled(&store).await;

    let relay = Consumer::Publisher(Arc::new(NatsRelay::new(nats.url())));
    session::prepare_all(&store, std::slice::from_ref(&relay)).await?;
    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let runner = tokio::spawn(
        Runner::new(store.clone(), relay.clone(), RunnerSettings::default()).run(stop.clone()),
    );
    karvon_tests::wait_caught_up(&store, &["nats_relay"], Duration::from_secs(3600)).await?;
    let relay_rate = written as f64 / started.elapsed().as_secs_f64();

    let raw_count = written.min(200_000) as usize;
    let raw_rate = raw_publish(&store, &nats.url(), raw_count).await?;

    let lag = lag_at_rate(&store, &nats.url(), 1_000, seconds).await?;
    let _ = stop_tx.send(true);
    let _ = runner.await;

    println!("== NATS relay: {written} events of backlog ==");
    println!("karvon relay (acks, checkpoint per batch): {relay_rate:>9.0} events/s");
    println!(
        "baseline async-nats, same bodies:          {raw_rate:>9.0} msgs/s   (first {raw_count})"
    );
    println!(
        "ratio:                                     {:>9.2} of raw publishing",
        relay_rate / raw_rate
    );
    println!(
        "commit -> subscriber at 1,000 events/s for {seconds}s: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms ({} events)\n",
        lag.percentile(0.5),
        lag.percentile(0.99),
        lag.percentile(1.0),
        lag.0.len()
    );
    Ok(())
}

/// async-nats publishing the first `count` events' CloudEvents bodies to a
/// stream of its own, at most 256 awaiting their ack, as the relay does.
async fn raw_publish(store: &Db, url: &str, count: usize) -> anyhow::Result<f64> {
    let mut bodies = Vec::with_capacity(count);
    let mut after = karvon_projections::Position::START;
    while bodies.len() < count {
        let events = audit::tenant_feed(store, "default", after, 5_000).await?;
        let Some(last) = events.last() else {
            break;
        };
        after = last.position;
        for event in &events {
            let body = serde_json::to_vec(&relay::cloud_event(event))?;
            bodies.push((relay::message_id(event), body));
        }
    }
    bodies.truncate(count);
    let client = async_nats::connect(url).await?;
    let context = jetstream::new(client);
    context
        .create_stream(stream::Config {
            name: "BENCH_RAW".into(),
            subjects: vec!["bench.raw".into()],
            storage: stream::StorageType::File,
            duplicate_window: relay::DUPLICATE_WINDOW,
            ..stream::Config::default()
        })
        .await
        .context("raw stream")?;
    let started = Instant::now();
    for chunk in bodies.chunks(relay::MAX_IN_FLIGHT) {
        let mut acks = Vec::with_capacity(chunk.len());
        for (id, body) in chunk {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            acks.push(
                context
                    .publish_with_headers("bench.raw", headers, body.clone().into())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(bodies.len() as f64 / started.elapsed().as_secs_f64())
}

/// Appends one event every `1/rate` s (open loop) while a core NATS
/// subscriber on `karvon.>` notes when each arrives.
async fn lag_at_rate(store: &Db, url: &str, rate: u64, seconds: u64) -> anyhow::Result<Latencies> {
    let client = async_nats::connect(url).await?;
    let mut subscription = client.subscribe("karvon.>").await?;
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let received: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let listener = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let at = Instant::now();
                if let Ok(body) = serde_json::from_slice::<serde_json::Value>(&message.payload)
                    && let Some(id) = body["id"].as_str()
                {
                    received.lock().await.insert(id.to_string(), at);
                }
            }
        })
    };
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    for index in 0..total {
        let due = started + interval * index as u32;
        tokio::time::sleep_until(due.into()).await;
        let payload = serde_json::json!({"Bench": {"index": index}});
        let id = append_raw_event(
            store,
            "Bench",
            &format!("default/L{}", index % 50),
            "Bench",
            &payload,
        )
        .await?;
        committed
            .lock()
            .await
            .insert(id.to_string(), Instant::now());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    listener.abort();
    let committed = committed.lock().await;
    let received = received.lock().await;
    let mut lags: Vec<Duration> = committed
        .iter()
        .filter_map(|(id, at)| {
            received
                .get(id)
                .map(|got| got.saturating_duration_since(*at))
        })
        .collect();
    anyhow::ensure!(
        lags.len() == committed.len(),
        "{} of {} events reached the subscriber",
        lags.len(),
        committed.len()
    );
    lags.sort();
    Ok(Latencies(lags))
}
