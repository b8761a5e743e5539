//! Meter readings over MQTT end to end: a Mosquitto broker of the test's
//! own, a publisher speaking the Acrel format (`fixtures/acrel/`), the real
//! application listening with a persistent session and manual acks.

use std::time::{Duration, Instant};

use karvon_adapters::store::CommandExecutor;
use karvon_domain::Id;
use karvon_domain::ids::meter_stream_id;
use karvon_domain::meter::{Meter, MeterCommand, SupplyStatus};
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
           "settings": {"mqtt_url": broker.url(), "topic_prefix": "acrel",
                        "relay_timeout_secs": 3},
           "secrets": {"signing_secrets": [SECRET]}})
}

fn reading(meter: &str, minute: usize, register: &str) -> Vec<u8> {
    reading_of(meter, minute, register, "0.25")
}

/// A reading with the given register and interval consumption (JSON
/// numbers as text).
fn reading_of(meter: &str, minute: usize, register: &str, consumption: &str) -> Vec<u8> {
    let at = chrono::DateTime::from_timestamp(1_765_000_000 + minute as i64 * 60, 0)
        .expect("time")
        .to_rfc3339();
    let number = |text: &str| serde_json::from_str::<Value>(text).expect("number");
    json!({"event_type": "meter_reading", "timestamp": at, "meter_id": meter,
           "meter_type": "ADL200",
           "data": {"reading": number(register), "consumption": number(consumption),
                    "voltage": 220.5, "current": 15.2, "power_factor": 0.95}})
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

/// Publishes `payload` for `meter` until a reading is recorded: the
/// listener's persistent session exists from then on.
async fn until_subscribed(
    db: &Db,
    client: &AsyncClient,
    station: &str,
    meter: &str,
    payload: Vec<u8>,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(db, RECORDED).await == 0 {
        publish(client, station, meter, payload.clone()).await;
        assert!(Instant::now() < deadline, "the listener never subscribed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
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
    until_subscribed(&store, &client, "S0", "PROBE", reading("PROBE", 0, "1")).await;

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

fn config(db: &TestDb, backend: Backend) -> karvon_app::Config {
    let mut config = test_config(db);
    if backend == Backend::Postgres {
        config.secrets_key = Some("55".repeat(32));
    }
    config
}

async fn app_with_listener(backend: Backend, broker: &MosquittoServer) -> (TestDb, TestApp) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app_with(config(&db, backend), karvon_app::Role::All)
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
    until_subscribed(
        &app.db,
        &client,
        "S1",
        "ACR-001234",
        reading("ACR-001234", 0, "15234.56"),
    )
    .await;
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
    assert_eq!(items[0]["flags"], json!([]));
    assert_eq!(
        items[1]["flags"],
        json!(["register_backwards"]),
        "the register went backwards"
    );
    let (status, _) = app.get("/api/v1/meters/NOPE").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The backwards register raised its alert.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, alerts) = app
            .get("/api/v1/alerts?kind=meter_register_backwards")
            .await;
        if alerts["data"]["items"][0]["subject"] == "meter:ACR-001234" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no meter_register_backwards alert: {alerts}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A client subscribed to `topic`; what it receives.
async fn subscriber(
    broker: &MosquittoServer,
    topic: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<rumqttc::Publish> {
    let options = MqttOptions::new(
        format!("watch-{}", uuid::Uuid::new_v4()),
        "127.0.0.1",
        broker.port,
    );
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _client = client;
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(publish))) => {
                    if sender.send(publish).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    receiver
}

async fn meter_commands(app: &TestApp, meter: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/meters/{meter}/commands")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["items"].as_array().expect("items").clone()
}

/// Polls `check` until it holds (or fails the test after `timeout`).
async fn eventually<F, Fut>(what: &str, timeout: Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn relay_off_goes_out_is_confirmed_by_status_or_times_out(backend: Backend) {
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let (_db, app) = app_with_listener(backend, &broker).await;
    let mut commands = subscriber(&broker, "acrel/+/meter/+/command").await;
    let client = publisher(&broker).await;
    eventually("the meter reported", Duration::from_secs(30), || async {
        publish(&client, "S7", "ACR-9", reading("ACR-9", 0, "10")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        count(&app.db, RECORDED).await > 0
    })
    .await;
    karvon_tests::wait_caught_up(&app.db, &["meters"], Duration::from_secs(30))
        .await
        .expect("caught up");

    let (status, body) = app
        .post(
            "/api/v1/meters/ACR-9/commands",
            &json!({"command": "relay_off"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let command_id = body["data"]["id"].as_str().expect("id").to_string();
    let sent = tokio::time::timeout(Duration::from_secs(15), commands.recv())
        .await
        .expect("the command reached the broker")
        .expect("a publish");
    assert_eq!(sent.topic, "acrel/S7/meter/ACR-9/command");
    let payload: Value = serde_json::from_slice(&sent.payload).expect("json");
    assert_eq!(payload["command"], "relay_off", "{payload}");
    assert_eq!(payload["command_id"], command_id.as_str());
    assert_eq!(payload["source"], "karvon");

    client
        .publish(
            "acrel/S7/meter/ACR-9/status",
            QoS::AtLeastOnce,
            false,
            json!({"event_type": "status_change", "timestamp": "2025-12-06T10:30:00Z",
                   "meter_id": "ACR-9", "previous_status": "connected",
                   "new_status": "disconnected", "reason": "remote_command"})
            .to_string(),
        )
        .await
        .expect("publish");
    eventually(
        "the command is confirmed",
        Duration::from_secs(15),
        || async {
            let items = meter_commands(&app, "ACR-9").await;
            items
                .first()
                .is_some_and(|command| command["status"] == "confirmed")
        },
    )
    .await;
    let (_, meter) = app.get("/api/v1/meters/ACR-9").await;
    assert_eq!(meter["data"]["status"], "disconnected", "{meter}");

    // No confirmation: timed out after the integration's 3 s.
    let (status, body) = app
        .post(
            "/api/v1/meters/ACR-9/commands",
            &json!({"command": "relay_on"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let second = body["data"]["id"].as_str().expect("id").to_string();
    eventually("the command times out", Duration::from_secs(20), || async {
        meter_commands(&app, "ACR-9").await.iter().any(|command| {
            command["command_id"] == second.as_str() && command["status"] == "timed_out"
        })
    })
    .await;
    eventually(
        "the timeout raises an alert",
        Duration::from_secs(15),
        || async {
            let (_, alerts) = app.get("/api/v1/alerts?kind=relay_command_timeout").await;
            alerts["data"]["items"].as_array().is_some_and(|items| {
                items
                    .iter()
                    .any(|a| a["subject"] == "meter:ACR-9" && a["status"] == "active")
            })
        },
    )
    .await;
    // A meter that never reported takes no command.
    let (status, _) = app
        .post(
            "/api/v1/meters/NEVER/commands",
            &json!({"command": "relay_off"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

const READING_FIXTURE: &str = include_str!("../../fixtures/acrel/webhook-meter-reading.json");
const STATUS_FIXTURE: &str = include_str!("../../fixtures/acrel/webhook-status-change.json");

/// An Acrel webhook delivery: `signed` is what the signature covers,
/// `sent` what goes out (they differ for a tampered body).
struct Delivery<'a> {
    kind: &'a str,
    id: &'a str,
    secret: &'a str,
    age: i64,
    signed: &'a str,
    sent: &'a str,
}

impl<'a> Delivery<'a> {
    fn of(kind: &'a str, id: &'a str, body: &'a str) -> Self {
        Self {
            kind,
            id,
            secret: SECRET,
            age: 0,
            signed: body,
            sent: body,
        }
    }

    async fn post(&self, app: &TestApp, integration: &str) -> (StatusCode, Value) {
        use karvon_adapters::integrations::{sign, signing_key};
        let timestamp = (chrono::Utc::now().timestamp() - self.age).to_string();
        let key = signing_key(self.secret).expect("key");
        let signature = sign(&key, self.id, &timestamp, self.signed.as_bytes());
        app.send(
            reqwest::Client::new()
                .post(app.url(&format!(
                    "/api/v1/acrel/webhooks/{}?integration={integration}",
                    self.kind
                )))
                .header("webhook-id", self.id)
                .header("webhook-timestamp", timestamp)
                .header("webhook-signature", signature)
                .header("content-type", "application/json")
                .body(self.sent.to_string()),
        )
        .await
    }
}

/// The id of the test's one integration.
async fn integration_id(app: &TestApp) -> String {
    let (_, list) = app.get("/api/v1/integrations").await;
    list["data"]["items"][0]["id"]
        .as_str()
        .expect("id")
        .to_string()
}

async fn acrel_webhooks_are_signed_fresh_and_applied_once(backend: Backend) {
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let (_db, app) = app_with_listener(backend, &broker).await;
    let integration = integration_id(&app).await;
    let forged = "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcY";
    let tampered = READING_FIXTURE.replace("15234.56", "1.00");
    let reading = Delivery::of("meter-reading", "w-4", READING_FIXTURE);
    for (case, delivery) in [
        (
            "forged",
            Delivery {
                id: "w-1",
                secret: forged,
                ..Delivery::of("meter-reading", "", READING_FIXTURE)
            },
        ),
        (
            "tampered",
            Delivery {
                id: "w-2",
                sent: &tampered,
                ..Delivery::of("meter-reading", "", READING_FIXTURE)
            },
        ),
        (
            "stale",
            Delivery {
                id: "w-3",
                age: 600,
                ..Delivery::of("meter-reading", "", READING_FIXTURE)
            },
        ),
    ] {
        let (status, body) = delivery.post(&app, &integration).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
    }
    assert_eq!(
        count(&app.db, RECORDED).await,
        0,
        "refused deliveries record nothing"
    );

    let (status, body) = reading.post(&app, &integration).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, body) = reading.post(&app, &integration).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["duplicate"], true);
    assert_eq!(count(&app.db, RECORDED).await, 1, "replayed once");

    let (status, body) = Delivery::of("status-change", "w-5", STATUS_FIXTURE)
        .post(&app, &integration)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    karvon_tests::wait_caught_up(&app.db, &["meters"], Duration::from_secs(30))
        .await
        .expect("caught up");
    let (_, meter) = app.get("/api/v1/meters/ACR-001234").await;
    assert_eq!(meter["data"]["status"], "disconnected", "{meter}");
    assert_eq!(
        meter["data"]["last_reading"]["reading"], "15234.56",
        "{meter}"
    );
}

/// A webhook that moves a meter between two MQTT batches is neither
/// overwritten nor hidden: a status the listener saw last is decided on
/// the stored state (where the webhook changed it), and the next reading
/// commits on top of the webhook's write.
async fn a_webhook_between_mqtt_batches_is_neither_lost_nor_hidden(backend: Backend) {
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let (_db, app) = app_with_listener(backend, &broker).await;
    let integration = integration_id(&app).await;
    let client = publisher(&broker).await;
    let meter = "ACR-001234";
    until_subscribed(&app.db, &client, "S1", meter, reading(meter, 1, "100")).await;
    let status = |to: &str| {
        json!({"event_type": "status_change", "timestamp": chrono::Utc::now().to_rfc3339(),
               "meter_id": meter, "new_status": to})
        .to_string()
        .into_bytes()
    };
    let shown = || async {
        let (_, body) = app.get(&format!("/api/v1/meters/{meter}")).await;
        body["data"].clone()
    };
    let connected_over_mqtt = || async {
        client
            .publish(
                format!("acrel/S1/meter/{meter}/status"),
                QoS::AtLeastOnce,
                false,
                status("connected"),
            )
            .await
            .expect("publish");
    };
    // "connected" over MQTT, then reading number `n`: both must show.
    let (shown, connected_over_mqtt, client) = (&shown, &connected_over_mqtt, &client);
    let reconnected_with = |what: &'static str, n: usize, register: &'static str| async move {
        connected_over_mqtt().await;
        publish(client, "S1", meter, reading(meter, n, register)).await;
        eventually(what, Duration::from_secs(15), || async {
            let meter = shown().await;
            meter["status"] == "connected" && meter["readings"] == n
        })
        .await;
    };
    connected_over_mqtt().await;
    eventually("connected over MQTT", Duration::from_secs(15), || async {
        shown().await["status"] == "connected"
    })
    .await;

    let (code, body) = Delivery::of("status-change", "w-between", STATUS_FIXTURE)
        .post(&app, &integration)
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    eventually(
        "disconnected by the webhook",
        Duration::from_secs(15),
        || async { shown().await["status"] == "disconnected" },
    )
    .await;

    // The listener last saw it connected; the store says disconnected.
    reconnected_with("connected again and the reading stored", 2, "101").await;

    // Another instance disconnects it: this listener's remembered state
    // is stale, and the repeated "connected" must still be applied.
    let elsewhere = CommandExecutor::<Meter>::new(app.db.clone());
    let meter_id = Id::parse(meter).expect("id");
    let stream = meter_stream_id(&Id::parse("default").expect("tenant"), &meter_id);
    let disconnect = MeterCommand::ChangeStatus {
        meter_id,
        status: SupplyStatus::Disconnected,
        reason: Some("another instance".into()),
        at: chrono::Utc::now(),
    };
    elsewhere
        .execute(&stream, disconnect, &karvon_tests::system_metadata())
        .await
        .expect("disconnected elsewhere");
    eventually(
        "disconnected elsewhere",
        Duration::from_secs(15),
        || async { shown().await["status"] == "disconnected" },
    )
    .await;
    reconnected_with(
        "connected again over a stale memory, and the reading stored",
        3,
        "102",
    )
    .await;
}

/// Consumption per local hour is the register's difference over the hour
/// (the reading before the range as the baseline), not the interval
/// field, whatever it says.
async fn consumption_follows_register_rises_in_the_tenant_zone(backend: Backend) {
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let (db, app) = app_with_listener(backend, &broker).await;
    karvon_tests::execute(
        &app.db,
        "UPDATE tenants SET time_zone = 'Asia/Tashkent' WHERE tenant_id = 'default'",
    )
    .await
    .expect("zone");
    // A checked key (with its tenant's zone) is cached for a few seconds:
    // start afresh rather than wait.
    app.stop().await.expect("stop");
    let app = spawn_app_with(config(&db, backend), karvon_app::Role::All)
        .await
        .expect("app");
    let integration = integration_id(&app).await;
    let readings = [
        ("2025-01-01T18:50:00Z", "100.00"), // 23:50 local, the day before
        ("2025-01-01T19:10:00Z", "100.75"),
        ("2025-01-01T19:40:00Z", "101.50"),
        ("2025-01-01T20:05:00Z", "102.00"),
        ("2025-01-01T20:30:00Z", "103.25"),
    ];
    for (n, (at, register)) in readings.iter().enumerate() {
        let body = format!(
            r#"{{"event_type":"meter_reading","timestamp":"{at}","meter_id":"ACR-C","data":{{"reading":{register},"consumption":999}}}}"#
        );
        let id = format!("c-{n}");
        let (status, answer) = Delivery::of("meter-reading", &id, &body)
            .post(&app, &integration)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    karvon_tests::wait_caught_up(&app.db, &["meters"], Duration::from_secs(30))
        .await
        .expect("caught up");
    let (status, body) = app
        .get("/api/v1/meters/ACR-C/consumption?period=hourly&from=2025-01-02&to=2025-01-02")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items = body["data"]["buckets"].as_array().expect("buckets");
    let got: Vec<(&str, &str, i64)> = items
        .iter()
        .map(|item| {
            (
                item["period_start"].as_str().expect("start"),
                item["consumption"].as_str().expect("kWh"),
                item["backwards_steps"].as_i64().expect("steps"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("2025-01-02T00:00:00+05:00", "1.50", 0),
            ("2025-01-02T01:00:00+05:00", "1.75", 0)
        ],
        "{body}"
    );
    let (status, _) = app
        .get("/api/v1/meters/ACR-C/consumption?period=weekly")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Waits until exactly one alert of `kind` is active, and returns it.
async fn one_open_alert(app: &TestApp, kind: &str, timeout: Duration) -> Value {
    let query = format!("?kind={kind}&status=active");
    let deadline = Instant::now() + timeout;
    loop {
        let open = alerts(app, &query).await;
        if let [alert] = open.as_slice() {
            return alert.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no single open {kind} alert: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn alerts(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/alerts{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["items"].as_array().expect("items").clone()
}

/// An over-voltage message sent twice raises one alert; another occurrence
/// counts on it; once resolved, the next one raises it again.
async fn a_device_alarm_raises_one_alert_until_resolved(backend: Backend) {
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let (_db, app) = app_with_listener(backend, &broker).await;
    let client = publisher(&broker).await;
    let alarm = |at: &str| {
        json!({"event_type": "alert", "timestamp": at, "meter_id": "ACR-001234",
               "alert_type": "over_voltage", "severity": "warning", "value": 245.5,
               "threshold": 240.0, "message": "Voltage exceeded threshold"})
        .to_string()
    };
    let send = |payload: String| {
        let client = client.clone();
        async move {
            client
                .publish(
                    "acrel/S1/meter/ACR-001234/alert",
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .expect("publish");
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while alerts(&app, "?kind=meter_over_voltage").await.is_empty() {
        send(alarm("2024-12-15T10:30:00Z")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(Instant::now() < deadline, "the alarm raised no alert");
    }
    // The same message again (and again): still one alert, one occurrence.
    send(alarm("2024-12-15T10:30:00Z")).await;
    send(alarm("2024-12-15T10:30:00Z")).await;
    // Another occurrence of the cause while it is open: counted.
    send(alarm("2024-12-15T10:35:00Z")).await;
    eventually(
        "the occurrence is counted",
        Duration::from_secs(15),
        || async { alerts(&app, "?kind=meter_over_voltage").await[0]["occurrences"] == 2 },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = alerts(&app, "?status=active").await;
    assert_eq!(open.len(), 1, "{open:?}");
    let alert = &open[0];
    assert_eq!(alert["kind"], "meter_over_voltage");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["subject"], "meter:ACR-001234");
    assert_eq!(alert["occurrences"], 2, "{alert}");
    let id = alert["id"].as_str().expect("id").to_string();

    let (status, body) = app
        .post(&format!("/api/v1/alerts/{id}/acknowledge"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post(
            &format!("/api/v1/alerts/{id}/resolve"),
            &json!({"note": "fixed the transformer"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    eventually("resolved", Duration::from_secs(15), || async {
        alerts(&app, "?status=resolved").await.len() == 1
    })
    .await;
    send(alarm("2024-12-15T11:00:00Z")).await;
    eventually("raised again", Duration::from_secs(15), || async {
        let open = alerts(&app, "?status=active").await;
        open.len() == 1 && open[0]["occurrences"] == 1
    })
    .await;
    let (status, _) = app
        .post("/api/v1/alerts/NOPE/acknowledge", &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get("/api/v1/alerts?status=open").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Reads Server-Sent Events from `response` until `wanted` of them have
/// the event name `name`: (id, name, data) of every event read.
async fn sse_events(
    response: &mut reqwest::Response,
    name: &str,
    wanted: usize,
    timeout: Duration,
) -> Vec<(String, String, Value)> {
    let deadline = Instant::now() + timeout;
    let mut buffer = String::new();
    let mut events = Vec::new();
    while events.iter().filter(|(_, n, _)| n == name).count() < wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {name} event in time: {events:?}");
        let Ok(Ok(Some(chunk))) = tokio::time::timeout(left, response.chunk()).await else {
            panic!("the stream ended or stalled: {events:?}");
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    id = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("event:") {
                    event = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim());
                }
            }
            if !event.is_empty() {
                events.push((
                    id,
                    event,
                    serde_json::from_str(&data).unwrap_or(Value::Null),
                ));
            }
        }
    }
    events
}

async fn open_stream(app: &TestApp, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url("/api/v1/stream"));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    let response = request.send().await.expect("stream");
    assert_eq!(response.status(), StatusCode::OK);
    response
}

/// The live stream shows a device alarm's alert and readings as they are
/// recorded, and resumes after `Last-Event-ID`.
async fn the_stream_shows_alerts_and_readings_and_resumes(backend: Backend) {
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let (_db, app) = app_with_listener(backend, &broker).await;
    let integration = integration_id(&app).await;
    let mut stream = open_stream(&app, None).await;

    let alarm = include_str!("../../fixtures/acrel/webhook-alert.json");
    let sent = Instant::now();
    let (status, body) = Delivery::of("alert", "s-1", alarm)
        .post(&app, &integration)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let seen = sse_events(&mut stream, "alert", 1, Duration::from_secs(10)).await;
    println!(
        "alert on the stream {:?} after the webhook was sent",
        sent.elapsed()
    );
    let (_, _, alert) = seen
        .iter()
        .find(|(_, name, _)| name == "alert")
        .expect("alert");
    assert_eq!(alert["kind"], "meter_over_voltage", "{alert}");
    assert_eq!(alert["status"], "active", "{alert}");

    for (n, register) in ["1.5", "2.5"].iter().enumerate() {
        let body = format!(
            r#"{{"timestamp":"2025-01-01T0{n}:00:00Z","meter_id":"ACR-001234","data":{{"reading":{register}}}}}"#
        );
        let id = format!("s-r{n}");
        let (status, answer) = Delivery::of("meter-reading", &id, &body)
            .post(&app, &integration)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    let seen = sse_events(&mut stream, "reading", 2, Duration::from_secs(10)).await;
    let readings: Vec<&(String, String, Value)> = seen
        .iter()
        .filter(|(_, name, _)| name == "reading")
        .collect();
    assert_eq!(readings[0].2["reading"], "1.5", "{seen:?}");
    assert_eq!(readings[0].2["meter_id"], "ACR-001234");
    drop(stream);

    // Resume after the first reading: the second comes first.
    let mut resumed = open_stream(&app, Some(&readings[0].0)).await;
    let again = sse_events(&mut resumed, "reading", 1, Duration::from_secs(10)).await;
    let first = again
        .iter()
        .find(|(_, name, _)| name == "reading")
        .expect("reading");
    assert_eq!(first.2["reading"], "2.5", "{again:?}");
    let (status, _) = app
        .send(
            app.client
                .get(app.url("/api/v1/stream"))
                .header("Last-Event-ID", "garbage"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A burst far beyond what one batch holds (20,000 readings of 10,000
/// meters, published faster than they are committed): every one is stored.
/// The listener once stopped after ~10,000 messages waited for their ack.
async fn a_burst_of_twenty_thousand_readings_is_stored_whole(backend: Backend) {
    const READINGS: usize = 20_000;
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let (_db, app) = app_with_listener(backend, &broker).await;
    let client = publisher(&broker).await;
    until_subscribed(&app.db, &client, "S0", "PROBE", reading("PROBE", 0, "1")).await;
    for n in 0..READINGS {
        let id = format!("M{:05}", n % 10_000);
        publish(&client, "S1", &id, reading(&id, 1 + n / 10_000, "5")).await;
    }
    let expected = READINGS as i64 + 1;
    let stored = until_count(&app.db, RECORDED, expected, Duration::from_secs(240)).await;
    assert_eq!(stored, expected, "every reading of the burst is stored");
}

/// A meter with no reading for `offline_after_secs` raises
/// `meter_offline`; its next reading clears it.
async fn a_silent_meter_raises_meter_offline_until_it_reports_again(backend: Backend) {
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app_with(config(&db, backend), karvon_app::Role::All)
        .await
        .expect("app");
    let mut integration = acrel(&broker);
    integration["settings"]["offline_after_secs"] = json!(3);
    let (status, body) = app.post("/api/v1/integrations", &integration).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let client = publisher(&broker).await;
    until_subscribed(&app.db, &client, "S1", "ACR-Q", reading("ACR-Q", 1, "10")).await;
    let alert = one_open_alert(&app, "meter_offline", Duration::from_secs(30)).await;
    assert_eq!(alert["subject"], "meter:ACR-Q", "{alert}");
    let (_, meter) = app.get("/api/v1/meters/ACR-Q").await;
    assert!(meter["data"]["silent_since"].is_string(), "{meter}");

    publish(&client, "S1", "ACR-Q", reading("ACR-Q", 2, "11")).await;
    eventually(
        "the reading cleared meter_offline",
        Duration::from_secs(30),
        || async {
            alerts(&app, "?kind=meter_offline&status=resolved")
                .await
                .len()
                == 1
        },
    )
    .await;
}

/// Interval consumption beyond mean ± 3σ of the meter's last readings is
/// flagged on the reading and raises `meter_reading_anomaly`.
async fn an_unusual_consumption_is_flagged_and_raises_an_anomaly_alert(backend: Backend) {
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let (_db, app) = app_with_listener(backend, &broker).await;
    let client = publisher(&broker).await;
    until_subscribed(
        &app.db,
        &client,
        "S1",
        "ACR-A",
        reading_of("ACR-A", 0, "100", "11"),
    )
    .await;
    // 23 more usual readings (10 and 12 kWh), then 13.5 (within 3σ), then 16.
    for minute in 1..24 {
        let kwh = if minute % 2 == 0 { "10" } else { "12" };
        let register = (100 + minute * 11).to_string();
        publish(
            &client,
            "S1",
            "ACR-A",
            reading_of("ACR-A", minute, &register, kwh),
        )
        .await;
    }
    publish(
        &client,
        "S1",
        "ACR-A",
        reading_of("ACR-A", 24, "400", "13.5"),
    )
    .await;
    publish(&client, "S1", "ACR-A", reading_of("ACR-A", 25, "416", "16")).await;
    eventually("26 readings stored", Duration::from_secs(30), || async {
        let (_, meter) = app.get("/api/v1/meters/ACR-A").await;
        meter["data"]["readings"] == 26
    })
    .await;
    let (status, body) = app.get("/api/v1/meters/ACR-A/readings?limit=100").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let flagged: Vec<(String, Value)> = body["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|row| row["flags"] != json!([]))
        .map(|row| (row["consumption"].to_string(), row["flags"].clone()))
        .collect();
    assert_eq!(
        flagged,
        [("\"16\"".to_string(), json!(["consumption_anomaly"]))],
        "only 16 kWh is beyond the usual"
    );
    let alert = one_open_alert(&app, "meter_reading_anomaly", Duration::from_secs(15)).await;
    assert_eq!(alert["subject"], "meter:ACR-A", "{alert}");
}

// ---------------------------------------------------------------------------
// Tenancy on a shared broker, broker logins and TLS (security review)

fn acrel_on(url: &str, prefix: &str) -> Value {
    json!({"kind": "acrel", "name": "meters",
           "settings": {"mqtt_url": url, "topic_prefix": prefix},
           "secrets": {"signing_secrets": [SECRET]}})
}

async fn publish_on(client: &AsyncClient, topic: String, payload: Vec<u8>) {
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .expect("publish");
}

/// Readings recorded for tenant `tenant` (events of its meters).
async fn readings_of(db: &Db, tenant: &str) -> i64 {
    count(
        db,
        &format!(
            "SELECT CAST(count(*) AS TEXT) FROM events
              WHERE event_type = 'MeterReadingRecorded' AND aggregate_id LIKE '{tenant}/%'"
        ),
    )
    .await
}

async fn tenants_on_one_broker_never_hear_or_command_each_other(backend: Backend) {
    let broker = MosquittoServer::started().await.expect("mosquitto");
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app_with(config(&db, backend), karvon_app::Role::All)
        .await
        .expect("app");
    let (status, body) = app
        .post("/api/v1/integrations", &acrel_on(&broker.url(), "shared1"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    karvon_adapters::auth_store::create_tenant(&app.db, "b", "UTC")
        .await
        .expect("tenant b");
    let b =
        karvon_tests::authorized_client(&karvon_tests::admin_key(&app.db, "b").await.expect("key"))
            .expect("client");
    let register = |body: Value| b.post(app.url("/api/v1/integrations")).json(&body);
    // The same broker and prefix, or a prefix inside it, are A's.
    for prefix in ["shared1", "shared1/east"] {
        let (status, body) = app.send(register(acrel_on(&broker.url(), prefix))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{prefix}: {body}");
        assert_eq!(body["error"], "mqtt_topic_taken", "{body}");
    }
    // The same broker spelled otherwise is still the same broker.
    let spelled = format!("tcp://127.0.0.1:{}/", broker.port);
    let (status, body) = app.send(register(acrel_on(&spelled, "shared1"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Credentials in the URL and wildcard prefixes are refused outright.
    let userinfo = format!("mqtt://user:pass@127.0.0.1:{}", broker.port);
    for (url, prefix) in [
        (userinfo.as_str(), "b1"),
        (broker.url().as_str(), "b/+"),
        (broker.url().as_str(), "b/"),
    ] {
        let (status, body) = app.send(register(acrel_on(url, prefix))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url} {prefix}: {body}");
    }
    let (status, body) = app.send(register(acrel_on(&broker.url(), "shared2"))).await;
    assert_eq!(status, StatusCode::CREATED, "a prefix of its own: {body}");

    // A's meter reports; only A hears it.
    let client = publisher(&broker).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while readings_of(&app.db, "default").await == 0 {
        publish_on(
            &client,
            "shared1/S1/meter/M1/data".into(),
            reading("M1", 0, "10"),
        )
        .await;
        assert!(Instant::now() < deadline, "A's listener never subscribed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (status, _) = app.get("/api/v1/meters/M1").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.send(b.get(app.url("/api/v1/meters/M1"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = app
        .send(
            b.post(app.url("/api/v1/meters/M1/commands"))
                .json(&json!({"command": "relay_off"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "B cannot cut A's supply: {body}"
    );

    // An overlap stored before the rule (written past the API): the older
    // integration keeps the topic, the other never listens.
    let (json_settings, id) = (
        json!({"mqtt_url": broker.url(), "topic_prefix": "shared1"}).to_string(),
        uuid::Uuid::now_v7(),
    );
    karvon_tests::execute(
        &app.db,
        &format!(
            "INSERT INTO integrations (integration_id, tenant_id, kind, name, settings, secrets)
             VALUES ('{id}', 'b', 'acrel', 'legacy', '{json_settings}', '{{}}')"
        ),
    )
    .await
    .expect("legacy row");
    // Past the registry's refresh, A's next reading is A's alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    publish_on(
        &client,
        "shared1/S1/meter/M2/data".into(),
        reading("M2", 1, "20"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while readings_of(&app.db, "default").await < 2 {
        assert!(Instant::now() < deadline, "A's second reading never landed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        readings_of(&app.db, "b").await,
        0,
        "B heard none of A's meters"
    );
    app.stop().await.expect("stop");
}

async fn a_broker_that_wants_a_login_gets_the_sealed_credentials(backend: Backend) {
    let broker = MosquittoServer::started_with(karvon_tests::BrokerOptions {
        login: Some(("karvon".into(), "broker-pw".into())),
        tls: None,
    })
    .await
    .expect("mosquitto");
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app_with(config(&db, backend), karvon_app::Role::All)
        .await
        .expect("app");
    let mut body = acrel_on(&broker.url(), "acrel");
    body["secrets"]["mqtt_username"] = json!("karvon");
    body["secrets"]["mqtt_password"] = json!("broker-pw");
    let (status, created) = app.post("/api/v1/integrations", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let (_, list) = app.get("/api/v1/integrations").await;
    assert!(!list.to_string().contains("broker-pw"), "{list}");
    let mut options = MqttOptions::new("test-publisher", "127.0.0.1", broker.port);
    options.set_credentials("karvon", "broker-pw");
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    until_subscribed(&app.db, &client, "S1", "M1", reading("M1", 0, "1")).await;
    app.stop().await.expect("stop");
}

async fn mqtts_brokers_are_reached_over_tls(backend: Backend) {
    let ca = karvon_tests::TestCa::generate().expect("test CA");
    let broker = MosquittoServer::started_with(karvon_tests::BrokerOptions {
        login: None,
        tls: Some(ca.dir.clone()),
    })
    .await
    .expect("mosquitto");
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    let mut env = secret_env(backend);
    // Karvon trusts the system's roots; the test's CA is named the
    // standard way.
    env.push(("SSL_CERT_FILE", ca.ca_file().to_string_lossy().into_owned()));
    let server = KarvonProcess::start(&db, &env).await;
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let (status, body) = server
        .post("/api/v1/integrations", acrel_on(&url, "acrel"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let mut options = MqttOptions::new("test-publisher", "127.0.0.1", broker.port);
    options.set_transport(rumqttc::Transport::tls(
        std::fs::read(ca.ca_file()).expect("ca"),
        None,
        None,
    ));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    until_subscribed(&store, &client, "S1", "M1", reading("M1", 0, "1")).await;
    store.close().await;
}

on_both_backends!(
    tenants_on_one_broker_never_hear_or_command_each_other,
    a_broker_that_wants_a_login_gets_the_sealed_credentials,
    mqtts_brokers_are_reached_over_tls,
    a_webhook_between_mqtt_batches_is_neither_lost_nor_hidden,
    a_silent_meter_raises_meter_offline_until_it_reports_again,
    an_unusual_consumption_is_flagged_and_raises_an_anomaly_alert,
    a_burst_of_twenty_thousand_readings_is_stored_whole,
    the_stream_shows_alerts_and_readings_and_resumes,
    a_device_alarm_raises_one_alert_until_resolved,
    consumption_follows_register_rises_in_the_tenant_zone,
    acrel_webhooks_are_signed_fresh_and_applied_once,
    relay_off_goes_out_is_confirmed_by_status_or_times_out,
    kill_9_while_publishing_loses_and_doubles_nothing,
    conflicts_are_recorded_garbage_is_counted_and_the_listener_lives,
);
