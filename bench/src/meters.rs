//! Meter readings over MQTT at the scale: `readings` readings
//! from 10,000 meters published at QoS 1 to a Mosquitto of this run's
//! own, ingested end to end by the listener (published → committed →
//! counted in the readings read model): readings/s, beside the broker's
//! own publish → subscribe rate for the same messages (a plain QoS 1
//! subscriber) in the same run.

use std::time::{Duration, Instant};

use anyhow::Context;
use karvon_app::{Config, Role};
use karvon_tests::{Db, MosquittoServer, TestDb, spawn_app_with, test_config};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

const METERS: usize = 10_000;

pub async fn run(db: &TestDb, readings: usize) -> anyhow::Result<()> {
    let broker = MosquittoServer::started().await?;
    let messages: Vec<(String, Vec<u8>)> = (0..readings)
        .map(|n| {
            let (meter, round) = (n % METERS, n / METERS);
            let at = chrono::DateTime::from_timestamp(1_765_000_000 + round as i64 * 60, 0)
                .unwrap_or_default()
                .to_rfc3339();
            let id = format!("M{meter:05}");
            let payload = json!({"timestamp": at, "meter_id": id,
                "data": {"reading": format!("{}.{:02}", 1000 + round, meter % 100),
                         "consumption": 0.25, "voltage": 220.5}});
            (
                format!("acrel/S{}/meter/{id}/data", meter % 10),
                payload.to_string().into_bytes(),
            )
        })
        .collect();

    // Baseline: the broker alone, publisher to a QoS 1 subscriber.
    let (subscriber, mut events) = client(&broker, "bench-sub");
    subscriber
        .subscribe("acrel/+/meter/+/data", QoS::AtLeastOnce)
        .await?;
    // Counts what arrives; stops at the last message or after 3 s of
    // silence (a subscriber that lost its connection would wait forever).
    let waiting = tokio::spawn(async move {
        let mut received = 0usize;
        while received < readings {
            match tokio::time::timeout(Duration::from_secs(3), events.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(_)))) => received += 1,
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    eprintln!("baseline subscriber: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => break,
            }
        }
        (received, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    publish_all(&broker, &messages).await?;
    let (received, last) = waiting.await?;
    let broker_rate = received as f64 / (last - started).as_secs_f64();
    subscriber.disconnect().await.ok();
    if received < readings {
        println!("(baseline subscriber received {received} of {readings})");
    }

    let mut config: Config = test_config(db);
    config.log = "warn".into();
    config.secrets_key = Some("33".repeat(32));
    let app = spawn_app_with(config, Role::All).await?;
    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": "acrel", "name": "bench",
                    "settings": {"mqtt_url": broker.url()},
                    "secrets": {"signing_secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}}),
        )
        .await;
    anyhow::ensure!(status.is_success(), "integration: {status} {body}");
    // The listener is subscribed once a probe reading lands.
    let probe = json!({"timestamp": "2020-01-01T00:00:00Z", "data": {"reading": 1}})
        .to_string()
        .into_bytes();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&app.db).await? == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the listener never subscribed");
        publish_all(
            &broker,
            &[("acrel/S0/meter/PROBE/data".to_string(), probe.clone())],
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let started = Instant::now();
    publish_all(&broker, &messages).await?;
    let published = started.elapsed();
    // Until all arrived, or 30 s without progress (then the shortfall is
    // reported, not waited for forever). Counted every 500 ms: a count of
    // the whole table is work the database does beside Karvon's (at 100 ms
    // it took a sixth of the database's time); the coarser clock can only
    // understate the rate, by at most 500 ms over the run.
    let (mut stored, mut progress_at) = (0, Instant::now());
    while stored < readings as i64 + 1 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = count(&app.db).await?;
        if now > stored {
            (stored, progress_at) = (now, Instant::now());
        } else if progress_at.elapsed() > Duration::from_secs(30) {
            println!(
                "(only {} of {readings} readings stored; stalled)",
                stored - 1
            );
            break;
        }
    }
    let rate = (stored - 1) as f64 / (progress_at - started).as_secs_f64();
    app.stop().await?;
    println!("== MQTT meter readings: {readings} readings from {METERS} meters (QoS 1) ==");
    println!(
        "ingested end to end (in the readings model)  {rate:>8.0} readings/s  (published in {:.1}s)",
        published.as_secs_f64()
    );
    println!(
        "baseline broker publish → subscribe          {broker_rate:>8.0} readings/s  (ratio {:.2})\n",
        rate / broker_rate
    );
    Ok(())
}

fn client(broker: &MosquittoServer, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
    let mut options = MqttOptions::new(
        format!("{id}-{}", uuid::Uuid::new_v4()),
        "127.0.0.1",
        broker.port,
    );
    options.set_keep_alive(Duration::from_secs(60));
    options.set_inflight(1000);
    AsyncClient::new(options, 10_000)
}

/// Publishes every message at QoS 1 and waits until the broker has
/// acknowledged them all.
async fn publish_all(
    broker: &MosquittoServer,
    messages: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    let (publisher, mut events) = client(broker, "bench-pub");
    let total = messages.len();
    let acks = tokio::spawn(async move {
        let mut acked = 0usize;
        while acked < total {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    for (topic, payload) in messages {
        publisher
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .context("publish")?;
    }
    tokio::time::timeout(Duration::from_secs(600), acks).await??;
    publisher.disconnect().await.ok();
    Ok(())
}

/// Readings in the read model.
async fn count(db: &Db) -> anyhow::Result<i64> {
    let table = match db {
        Db::Postgres(_) => "meters.readings",
        Db::Sqlite(_) => "meters_readings",
    };
    let counted =
        karvon_tests::fetch_strings(db, &format!("SELECT CAST(count(*) AS TEXT) FROM {table}"))
            .await
            .unwrap_or_default();
    Ok(counted.first().and_then(|n| n.parse().ok()).unwrap_or(0))
}
