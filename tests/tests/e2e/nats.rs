//! Events on NATS JetStream: every committed event arrives exactly once as
//! CloudEvents; NATS down does not stop the API and the backlog drains in
//! order later; a republish is dropped by JetStream's de-duplication; the
//! documented subscriber pattern survives duplicates beyond the window.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use std::sync::Arc;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use karvon_adapters::relay::NatsRelay;
use karvon_adapters::runner::{Consumer, Runner, RunnerSettings, session};
use karvon_tests::{
    Backend, NatsServer, TestDb, fetch_strings, product, spawn_app_with, test_config,
    wait_caught_up,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Every message of `KARVON_EVENTS`, in stream order: (subject,
/// Nats-Msg-Id, body), read by a fresh consumer.
async fn stream_messages(url: &str) -> Vec<(String, String, Value)> {
    let client = async_nats::connect(url).await.expect("nats");
    let context = jetstream::new(client);
    let mut stream = context.get_stream("KARVON_EVENTS").await.expect("stream");
    let count = stream.info().await.expect("info").state.messages as usize;
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..pull::Config::default()
        })
        .await
        .expect("consumer");
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while messages.len() < count {
        assert!(
            Instant::now() < deadline,
            "read {} of {count}",
            messages.len()
        );
        let mut batch = consumer
            .fetch()
            .max_messages(count - messages.len())
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        while let Some(message) = batch.next().await {
            let message = message.expect("message");
            let id = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|value| value.as_str().to_string())
                .unwrap_or_default();
            let body = serde_json::from_slice(&message.payload).expect("JSON body");
            messages.push((message.subject.to_string(), id, body));
        }
    }
    messages
}

/// (aggregate_type, aggregate_id, sequence, event_id, event_type) of every
/// committed event, in feed order.
async fn committed(db: &karvon_tests::Db) -> Vec<Vec<String>> {
    fetch_strings(
        db,
        "SELECT aggregate_type || '|' || aggregate_id || '|' || CAST(sequence AS TEXT) || '|' ||
                CAST(event_id AS TEXT) || '|' || event_type
           FROM events ORDER BY global_position",
    )
    .await
    .expect("events")
    .into_iter()
    .map(|row| row.split('|').map(str::to_string).collect())
    .collect()
}

/// The relay as `GET /api/v1/admin/projections` shows it.
async fn relay_status(app: &karvon_tests::TestApp) -> Value {
    let (_, body) = app.get("/api/v1/admin/projections").await;
    body["data"]["items"]
        .as_array()
        .and_then(|items| items.iter().find(|item| item["name"] == "nats_relay"))
        .cloned()
        .unwrap_or_else(|| panic!("no relay in {body}"))
}

async fn some_commands(app: &karvon_tests::TestApp) {
    for id in ["P1", "P2"] {
        let (status, body) = app
            .post("/api/v1/products", &product(id, "dairy", None))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for qty in ["5", "7"] {
        let receipt = json!({"warehouse_id": "B1", "product_id": "P1", "qty": qty});
        let (status, body) = app.post("/api/v1/stock/receipts", &receipt).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let sale = json!({"sale_id": "S1", "branch_id": "B1", "cashier": "c", "sale_type": "retail",
        "payment_type": "cash", "occurred_at": "2026-11-25T10:00:00+05:00",
        "lines": [{"product_id": "P1", "qty": "2", "unit_price": "100"}]});
    let (status, body) = app.post("/api/v1/sales", &sale).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn every_committed_event_arrives_once_as_cloud_events(backend: Backend) {
    let nats = NatsServer::started().await.expect("nats-server");
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    config.nats_url = Some(nats.url());
    let app = spawn_app_with(config, karvon_app::Role::All)
        .await
        .expect("app");
    some_commands(&app).await;
    // The reactor's stock sale is committed too; then the relay drains.
    wait_caught_up(&app.db, &["sales_stock"], Duration::from_secs(30))
        .await
        .expect("reactor");
    wait_caught_up(&app.db, &["nats_relay"], Duration::from_secs(30))
        .await
        .expect("relay");
    let events = committed(&app.db).await;
    assert!(events.len() >= 6, "{events:?}");
    let messages = stream_messages(&nats.url()).await;
    assert_eq!(
        messages.len(),
        events.len(),
        "one message per committed event"
    );
    for (event, (subject, msg_id, body)) in events.iter().zip(&messages) {
        let [aggregate_type, aggregate_id, sequence, event_id, event_type] = &event[..] else {
            panic!("{event:?}");
        };
        assert_eq!(
            subject,
            &format!("karvon.default.{aggregate_type}.{event_type}")
        );
        assert_eq!(
            msg_id,
            &format!("{aggregate_type}:{aggregate_id}:{sequence}")
        );
        assert_eq!(body["specversion"], "1.0");
        assert_eq!(body["id"], json!(event_id));
        assert_eq!(
            body["type"],
            json!(format!("karvon.{aggregate_type}.{event_type}"))
        );
        assert_eq!(body["subject"], json!(aggregate_id));
        assert_eq!(body["source"], "/karvon/default");
        assert_eq!(body["datacontenttype"], "application/json");
        assert_eq!(body["tenant"], "default");
        assert_eq!(
            body["sequence"],
            json!(sequence.parse::<i64>().expect("sequence"))
        );
        assert!(
            body["time"]
                .as_str()
                .is_some_and(|time| time.ends_with('Z'))
        );
        assert!(body["position"].is_string() && body["correlationid"].is_string());
        assert!(body["data"].is_object(), "{body}");
    }
    // The reactor's event names what caused it.
    let sold = messages
        .iter()
        .find(|(subject, _, _)| subject.ends_with(".StockItem.StockSold"))
        .expect("the reactor's event");
    assert!(sold.2["causationid"].is_string(), "{}", sold.2);

    // A republish from the start sends everything again: JetStream drops
    // every repeat within its de-duplication window.
    app.stop().await.expect("stop");
    let mut config = test_config(&db);
    config.nats_url = Some(nats.url());
    karvon_app::republish(&config, "start")
        .await
        .expect("republish");
    let app = spawn_app_with(config, karvon_app::Role::All)
        .await
        .expect("app again");
    let status = wait_caught_up(&app.db, &["nats_relay"], Duration::from_secs(30)).await;
    status.expect("relay again");
    let seen = relay_status(&app).await["events_seen"]
        .as_i64()
        .unwrap_or_default();
    assert!(
        seen >= 2 * events.len() as i64,
        "the relay did not send again: {seen}"
    );
    assert_eq!(stream_messages(&nats.url()).await.len(), events.len());
    app.stop().await.expect("stop");
}

async fn nats_down_keeps_the_api_up_and_the_backlog_drains_in_order(backend: Backend) {
    let mut nats = NatsServer::reserve().expect("port");
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    config.nats_url = Some(nats.url());
    let app = spawn_app_with(config, karvon_app::Role::All)
        .await
        .expect("app");
    some_commands(&app).await;
    // 1,000 more events while NATS is down (written straight to the store).
    karvon_tests::append_raw_receipts(&app.db, "W9", 1_000, 10)
        .await
        .expect("events");
    let (status, _) = app.get("/ready").await;
    assert_eq!(status, StatusCode::OK, "ready while NATS is down");
    let (status, body) = app
        .post("/api/v1/products", &product("P3", "dairy", None))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "commands while NATS is down: {body}"
    );
    let (status, body) = app.get("/api/integrations/inventory-levels").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    karvon_tests::wait_settled(&app.db).await;
    let relay = relay_status(&app).await;
    assert!(
        relay["lag_events"].as_i64().unwrap_or_default() > 0,
        "{relay}"
    );

    nats.start().await.expect("nats up");
    wait_caught_up(
        &app.db,
        &["sales_stock", "nats_relay"],
        Duration::from_secs(60),
    )
    .await
    .expect("drained");
    let events = committed(&app.db).await;
    assert!(events.len() > 1_000);
    let messages = stream_messages(&nats.url()).await;
    assert_eq!(messages.len(), events.len());
    // In order per aggregate: each stream's sequences arrive 1, 2, 3, …
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for (_, _, body) in &messages {
        let stream = format!("{}:{}", body["aggregatetype"], body["aggregateid"]);
        let sequence = body["sequence"].as_i64().expect("sequence");
        let previous = last.insert(stream.clone(), sequence).unwrap_or(0);
        assert_eq!(sequence, previous + 1, "{stream} out of order");
    }
    app.stop().await.expect("stop");
}

/// The documented subscriber pattern: a durable pull consumer that records
/// each event id it has handled in its own store, in the same transaction
/// as its effect, and acknowledges after the commit. A message that comes
/// twice (here: re-sent under another message id, as happens beyond the
/// de-duplication window) changes nothing.
async fn the_subscriber_pattern_survives_duplicates(backend: Backend) {
    let nats = NatsServer::started().await.expect("nats-server");
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    config.nats_url = Some(nats.url());
    let app = spawn_app_with(config, karvon_app::Role::All)
        .await
        .expect("app");
    some_commands(&app).await;
    wait_caught_up(
        &app.db,
        &["sales_stock", "nats_relay"],
        Duration::from_secs(30),
    )
    .await
    .expect("relay");
    let events = committed(&app.db).await.len();
    // Re-send the first event under a fresh message id: JetStream keeps it.
    let client = async_nats::connect(nats.url()).await.expect("nats");
    let context = jetstream::new(client);
    let (subject, _, body) = stream_messages(&nats.url()).await.remove(0);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        "a-repeat-beyond-the-window",
    );
    context
        .publish_with_headers(
            subject,
            headers,
            serde_json::to_vec(&body).expect("body").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");

    // The subscriber's own store: processed ids and its effect (a count per
    // event type), written in one transaction.
    let store = std::env::temp_dir().join(format!("subscriber-{}.db", uuid::Uuid::now_v7()));
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&store)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options)
        .await
        .expect("store");
    sqlx::query("CREATE TABLE processed (event_id TEXT PRIMARY KEY)")
        .execute(&pool)
        .await
        .expect("table");
    sqlx::query("CREATE TABLE counts (event_type TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .expect("table");
    let stream = context.get_stream("KARVON_EVENTS").await.expect("stream");
    let consumer = stream
        .get_or_create_consumer(
            "example-subscriber",
            pull::Config {
                durable_name: Some("example-subscriber".into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..pull::Config::default()
            },
        )
        .await
        .expect("consumer");
    let mut handled = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while handled < events + 1 {
        assert!(
            Instant::now() < deadline,
            "handled {handled} of {}",
            events + 1
        );
        let mut batch = consumer
            .fetch()
            .max_messages(100)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .expect("fetch");
        while let Some(message) = batch.next().await {
            let message = message.expect("message");
            let event: Value = serde_json::from_slice(&message.payload).expect("JSON");
            let mut tx = pool.begin().await.expect("tx");
            let fresh = sqlx::query("INSERT INTO processed VALUES ($1) ON CONFLICT DO NOTHING")
                .bind(event["id"].as_str())
                .execute(&mut *tx)
                .await
                .expect("insert")
                .rows_affected()
                == 1;
            if fresh {
                sqlx::query(
                    "INSERT INTO counts VALUES ($1, 1)
                     ON CONFLICT (event_type) DO UPDATE SET n = n + 1",
                )
                .bind(event["type"].as_str())
                .execute(&mut *tx)
                .await
                .expect("effect");
            }
            tx.commit().await.expect("commit");
            message.ack().await.expect("ack");
            handled += 1;
        }
    }
    let total: i64 = sqlx::query_scalar("SELECT SUM(n) FROM counts")
        .fetch_one(&pool)
        .await
        .expect("sum");
    assert_eq!(total, events as i64, "the repeat was counted");
    let distinct: HashSet<String> = sqlx::query_scalar("SELECT event_id FROM processed")
        .fetch_all(&pool)
        .await
        .expect("ids")
        .into_iter()
        .collect();
    assert_eq!(distinct.len(), events);
    pool.close().await;
    let _ = std::fs::remove_file(&store);
    app.stop().await.expect("stop");
}

/// The relay is killed after NATS acknowledged a batch but before its
/// checkpoint moved; a fresh relay sends the batch again and JetStream
/// keeps one copy of each event.
async fn a_relay_crash_after_publish_duplicates_nothing(backend: Backend) {
    let nats = NatsServer::started().await.expect("nats-server");
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    karvon_tests::append_raw_receipts(&store, "W1", 300, 7)
        .await
        .expect("events");
    karvon_tests::wait_settled(&store).await;
    let relay = Consumer::Publisher(Arc::new(NatsRelay::new(nats.url())));
    session::prepare_all(&store, std::slice::from_ref(&relay))
        .await
        .expect("prepare");
    let (_stop_tx, stop) = watch::channel(false);
    let stalling = RunnerSettings {
        pause_before_checkpoint: Duration::from_secs(60),
        ..RunnerSettings::default()
    };
    let doomed =
        tokio::spawn(Runner::new(store.clone(), relay.clone(), stalling).run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let published = match async_nats::connect(nats.url()).await {
            Ok(client) => match jetstream::new(client).get_stream("KARVON_EVENTS").await {
                Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
                Err(_) => 0,
            },
            Err(_) => 0,
        };
        if published >= 300 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing was published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.abort();
    let _ = doomed.await;
    let status = karvon_tests::consumer_status(&store, &relay)
        .await
        .expect("status");
    assert_eq!(
        status.position,
        karvon_projections::Position::START.to_string(),
        "the checkpoint moved before the crash"
    );
    let _relay =
        tokio::spawn(Runner::new(store.clone(), relay, RunnerSettings::default()).run(stop));
    wait_caught_up(&store, &["nats_relay"], Duration::from_secs(30))
        .await
        .expect("caught up");
    let messages = stream_messages(&nats.url()).await;
    assert_eq!(messages.len(), 300, "a repeat reached the stream");
    let ids: HashSet<&str> = messages.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 300);
}

on_both_backends!(
    a_relay_crash_after_publish_duplicates_nothing,
    every_committed_event_arrives_once_as_cloud_events,
    nats_down_keeps_the_api_up_and_the_backlog_drains_in_order,
    the_subscriber_pattern_survives_duplicates,
);
