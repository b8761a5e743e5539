//! Meter readings over MQTT end to end: a Mosquitto broker of the test's
//! own, a publisher speaking the Acrel format (`fixtures/acrel/`), the real
//! application listening with a persistent session and manual acks.

use std::time::{Duration, Instant};

use karvon_tests::{
    Backend, Db, KarvonProcess, MosquittoServer, TestApp, TestDb, fetch_strings, spawn_app_with,
    test_config,
};
use reqwest::StatusCode;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn secret_env(backend: Backend) -> Vec<(&'static str, String)> {
    match backend {
        Backend::Postgres => vec![("KARVON_SECRETS_KEY", "55".repeat(32))],
        Backend::Sqlite => Vec::new(),
    }
}

fn acrel(broker: &MosquittoServer) -> Value {
    json!({"kind": "acrel", "name": "meters",
           "settings": {"mqtt_url": broker.url(), "topic_prefix": "acrel"},
           "secrets": {"signing_secrets": [SECRET]}})
}

fn reading(meter: &str, minute: usize, register: &str) -> Vec<u8> {
    let at = chrono::DateTime::from_timestamp(1_765_000_000 + minute as i64 * 60, 0)
        .expect("time")
        .to_rfc3339();
    json!({"event_type": "meter_reading", "timestamp": at, "meter_id": meter,
           "meter_type": "ADL200",
           "data": {"reading": serde_json::from_str::<Value>(register).expect("number"),
                    "consumption": 0.25, "voltage": 220.5, "current": 15.2,
                    "power_factor": 0.95}})
    .to_string()
    .into_bytes()
}

/// A publisher whose event loop runs in the background.
async fn publisher(broker: &MosquittoServer) -> AsyncClient {
    let mut options = MqttOptions::new(
        format!("test-{}", uuid::Uuid::new_v4()),
        "127.0.0.1",
        broker.port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 20_000);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    client
}

async fn publish(client: &AsyncClient, station: &str, meter: &str, payload: Vec<u8>) {
    client
        .publish(
            format!("acrel/{station}/meter/{meter}/data"),
            QoS::AtLeastOnce,
            false,
            payload,
        )
        .await
        .expect("publish");
}

async fn count(db: &Db, query: &str) -> i64 {
    fetch_strings(db, query).await.expect("count")[0]
        .parse()
        .expect("number")
}

const RECORDED: &str =
    "SELECT CAST(count(*) AS TEXT) FROM events WHERE event_type = 'MeterReadingRecorded'";

/// Waits until `query` counts `expected` (and returns the last count).
async fn until_count(db: &Db, query: &str, expected: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let counted = count(db, query).await;
        if counted >= expected || Instant::now() > deadline {
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn kill_9_while_publishing_loses_and_doubles_nothing(backend: Backend) {
    const METERS: usize = 100;
    const READINGS: usize = 100;
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    let mut server = KarvonProcess::start(&db, &secret_env(backend)).await;
    let (status, body) = server.post("/api/v1/integrations", acrel(&broker)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let client = publisher(&broker).await;

    // The listener's persistent session exists once a probe arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&store, RECORDED).await == 0 {
        publish(&client, "S0", "PROBE", reading("PROBE", 0, "1")).await;
        assert!(Instant::now() < deadline, "the listener never subscribed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let total = METERS * READINGS;
    for n in 0..total {
        let (meter, minute) = (n % METERS, n / METERS);
        let id = format!("ACR-{meter:06}");
        let register = format!("{}.{:02}", 1000 + minute * 3, meter % 100);
        publish(&client, "S1", &id, reading(&id, minute + 1, &register)).await;
        if n == total / 2 {
            // Mid-stream: kill -9, keep publishing while it is down.
            let stored = count(&store, RECORDED).await;
            server.kill();
            assert!(
                stored < total as i64,
                "the kill must land mid-stream ({stored} stored)"
            );
        }
        if n % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let _server = KarvonProcess::start(&db, &secret_env(backend)).await;
    let expected = total as i64 + 1;
    let stored = until_count(&store, RECORDED, expected, Duration::from_secs(180)).await;
    assert_eq!(stored, expected, "stored readings equal published ones");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&store, RECORDED).await, expected, "no duplicates");
    let instant = match backend {
        Backend::Postgres => "((payload::jsonb)->'MeterReadingRecorded'->>'at')",
        Backend::Sqlite => "json_extract(payload, '$.MeterReadingRecorded.at')",
    };
    let distinct = count(
        &store,
        &format!(
            "SELECT CAST(count(DISTINCT aggregate_id || '@' || {instant}) AS TEXT)
               FROM events WHERE event_type = 'MeterReadingRecorded'"
        ),
    )
    .await;
    assert_eq!(distinct, expected);
    let conflicts = count(
        &store,
        "SELECT CAST(count(*) AS TEXT) FROM events WHERE event_type = 'MeterReadingConflicted'",
    )
    .await;
    assert_eq!(
        conflicts, 0,
        "a redelivery is the same reading, not a conflict"
    );
    store.close().await;
}

async fn app_with_listener(backend: Backend, broker: &MosquittoServer) -> (TestDb, TestApp) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    if backend == Backend::Postgres {
        config.secrets_key = Some("55".repeat(32));
    }
    let app = spawn_app_with(config, karvon_app::Role::All)
        .await
        .expect("app");
    let (status, body) = app.post("/api/v1/integrations", &acrel(broker)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (db, app)
}

async fn conflicts_are_recorded_garbage_is_counted_and_the_listener_lives(backend: Backend) {
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let (_db, app) = app_with_listener(backend, &broker).await;
    let client = publisher(&broker).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&app.db, RECORDED).await == 0 {
        publish(
            &client,
            "S1",
            "ACR-001234",
            reading("ACR-001234", 0, "15234.56"),
        )
        .await;
        assert!(Instant::now() < deadline, "the listener never subscribed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The same instant with another register: kept first, conflict noted.
    publish(
        &client,
        "S1",
        "ACR-001234",
        reading("ACR-001234", 0, "99999"),
    )
    .await;
    // Garbage of every kind, then a good reading behind it.
    for garbage in [
        b"{not json".to_vec(),
        b"{}".to_vec(),
        reading("ANOTHER-METER", 1, "1"),
        json!({"timestamp": "yesterday", "data": {}})
            .to_string()
            .into_bytes(),
        json!({"timestamp": "2025-01-01T00:00:00Z", "data": {"reading": "12,5x"}})
            .to_string()
            .into_bytes(),
    ] {
        publish(&client, "S1", "ACR-001234", garbage).await;
    }
    publish(
        &client,
        "S1",
        "ACR-001234",
        reading("ACR-001234", 1, "15000.01"),
    )
    .await;

    let stored = until_count(&app.db, RECORDED, 2, Duration::from_secs(30)).await;
    assert_eq!(stored, 2);
    karvon_tests::wait_caught_up(&app.db, &["meters"], Duration::from_secs(30))
        .await
        .expect("caught up");
    let (status, meter) = app.get("/api/v1/meters/ACR-001234").await;
    assert_eq!(status, StatusCode::OK, "{meter}");
    assert_eq!(meter["data"]["readings"], 2, "{meter}");
    assert_eq!(meter["data"]["conflicts"], 1, "{meter}");
    assert_eq!(meter["data"]["station"], "S1");
    assert_eq!(
        meter["data"]["last_reading"]["reading"], "15000.01",
        "{meter}"
    );
    let (_, readings) = app.get("/api/v1/meters/ACR-001234/readings").await;
    let items = readings["data"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{readings}");
    assert_eq!(items[0]["reading"], "15234.56", "the first value stays");
    assert_eq!(items[0]["power_factor"], "0.95");
    assert_eq!(items[0]["backwards"], false);
    assert_eq!(items[1]["backwards"], true, "the register went backwards");
    let (status, _) = app.get("/api/v1/meters/NOPE").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

on_both_backends!(
    kill_9_while_publishing_loses_and_doubles_nothing,
    conflicts_are_recorded_garbage_is_counted_and_the_listener_lives,
);
