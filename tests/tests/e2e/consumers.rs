//! Consumer kinds and failure isolation: a consumer that cannot consume an
//! event stops alone, in state `failed`, on that event; the others go on.
//! Reactors run their commands with no feed transaction open, retry
//! `Contended`, and repeat nothing after a crash.

use std::sync::Arc;
use std::time::{Duration, Instant};

use karvon_adapters::StorageError;
use karvon_adapters::db::Conn;
use karvon_adapters::feed::FeedEvent;
use karvon_adapters::read_models::stock::StockProjection;
use karvon_adapters::runner::{
    self, Consumer, Projection, Runner, RunnerSettings, SkipOutcome, checkpoint, session,
};
use karvon_adapters::store::CommandExecutor;
use karvon_adapters::transfers::TransferProcess;
use karvon_domain::stock::{StockCommand, StockItem};
use karvon_domain::{Id, Quantity};
use karvon_projections::EventMetadata;
use karvon_tests::{
    Backend, Db, TestDb, append_raw_event, append_raw_receipts, checkpoint as stored_checkpoint,
    consumer_status, fetch_strings, projected_stock, replayed_stock, wait_caught_up,
    wait_for_status,
};
use rust_decimal::Decimal;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Runs `consumers` until the returned sender says stop (or is dropped).
async fn run(
    store: &Db,
    consumers: Vec<(Consumer, RunnerSettings)>,
) -> (watch::Sender<bool>, Vec<JoinHandle<()>>) {
    let all: Vec<Consumer> = consumers
        .iter()
        .map(|(consumer, _)| consumer.clone())
        .collect();
    session::prepare_all(store, &all).await.expect("prepare");
    let (stop_tx, stop) = watch::channel(false);
    let tasks = consumers
        .into_iter()
        .map(|(consumer, settings)| {
            tokio::spawn(Runner::new(store.clone(), consumer, settings).run(stop.clone()))
        })
        .collect();
    (stop_tx, tasks)
}

fn quick() -> RunnerSettings {
    RunnerSettings {
        retry_backoff: Duration::from_millis(100),
        ..RunnerSettings::default()
    }
}

fn metadata() -> EventMetadata {
    karvon_tests::system_metadata()
}

fn id(value: &str) -> Id {
    Id::parse(value).expect("id")
}

fn qty(value: i64) -> Quantity {
    Quantity::parse(Decimal::from(value)).expect("qty")
}

async fn receive(stock: &CommandExecutor<StockItem>, warehouse: &str, product: &str, amount: i64) {
    stock
        .execute(
            &format!("default/{warehouse}/{product}"),
            StockCommand::Receive {
                warehouse_id: id(warehouse),
                product_id: id(product),
                qty: qty(amount),
                batch: None,
                expiry_date: None,
                unit_cost: None,
                supplier_id: None,
                purchase_order_id: None,
            },
            &metadata(),
        )
        .await
        .expect("receive");
}

async fn transfer(stock: &CommandExecutor<StockItem>, from: &str, to: &str, amount: i64) {
    stock
        .execute(
            &format!("default/{from}/P1"),
            StockCommand::TransferOut {
                warehouse_id: id(from),
                product_id: id("P1"),
                to_warehouse_id: id(to),
                qty: qty(amount),
                transfer_id: uuid::Uuid::new_v4().to_string(),
            },
            &metadata(),
        )
        .await
        .expect("transfer");
}

/// On hand at (warehouse, P1) as the stock projection holds it.
async fn on_hand(store: &Db, warehouse: &str) -> Option<String> {
    let (levels, _) = projected_stock(store).await.expect("projection");
    levels
        .get(&("default".into(), warehouse.into(), "P1".into()))
        .map(|(on_hand, _)| on_hand.clone())
}

async fn count_events(store: &Db, event_type: &str) -> usize {
    fetch_strings(
        store,
        &format!("SELECT CAST(event_id AS TEXT) FROM events WHERE event_type = '{event_type}'"),
    )
    .await
    .expect("events")
    .len()
}

/// A read model that panics on any event of warehouse `BOOM`.
struct Panicky;

#[async_trait::async_trait]
impl Projection for Panicky {
    fn name(&self) -> &'static str {
        "panicky"
    }

    fn aggregate_types(&self) -> karvon_adapters::feed::Wanted {
        None
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    async fn create_tables(&self, _conn: &mut Conn<'_>, _schema: &str) -> Result<(), StorageError> {
        Ok(())
    }

    async fn apply(
        &self,
        _conn: &mut Conn<'_>,
        _schema: &str,
        events: &[FeedEvent],
    ) -> Result<(), StorageError> {
        if events
            .iter()
            .any(|event| event.aggregate_id.contains("/BOOM/"))
        {
            panic!("cannot handle warehouse BOOM");
        }
        Ok(())
    }
}

async fn a_panicking_consumer_stops_alone_and_skip_moves_it_on(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let panicky = Consumer::Projection(Arc::new(Panicky));
    let stock = Consumer::Projection(Arc::new(StockProjection::default()));
    let (_stop, _tasks) = run(
        &store,
        vec![(panicky.clone(), quick()), (stock.clone(), quick())],
    )
    .await;
    append_raw_receipts(&store, "W1", 2500, 7)
        .await
        .expect("append");
    append_raw_receipts(&store, "BOOM", 1, 1)
        .await
        .expect("append");
    let boom: Vec<String> = fetch_strings(
        &store,
        "SELECT CAST(event_id AS TEXT) FROM events WHERE aggregate_id LIKE '%/BOOM/%'",
    )
    .await
    .expect("boom");
    append_raw_receipts(&store, "W2", 500, 5)
        .await
        .expect("append");

    // The stock projection went past the event; the panicky one stopped
    // on it, having applied everything before it.
    wait_caught_up(&store, &["stock"], Duration::from_secs(30))
        .await
        .expect("stock never stopped");
    let failed = wait_for_status(&store, &panicky, Duration::from_secs(30), |status| {
        status.state == "failed"
    })
    .await
    .expect("panicky failed");
    assert_eq!(
        failed.failed_event_id.map(|id| id.to_string()).as_deref(),
        boom.first().map(String::as_str)
    );
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("cannot handle warehouse BOOM")),
        "{failed:?}"
    );
    assert_eq!(
        failed.events_seen, 2500,
        "events before the bad one applied"
    );
    assert_eq!(failed.lag_events, 501);
    let (expected, events) = replayed_stock(&store).await.expect("replay");
    let (actual, movements) = projected_stock(&store).await.expect("projection");
    assert_eq!((movements, actual), (events, expected));

    // Skip: recorded with its error, and the consumer goes on to the end.
    let SkipOutcome::Skipped(skipped) = checkpoint::skip(&store, "panicky", None, "test")
        .await
        .expect("skip")
    else {
        panic!("nothing to skip");
    };
    assert_eq!(Some(skipped.event_id.to_string()), boom.first().cloned());
    wait_caught_up(&store, &["panicky"], Duration::from_secs(30))
        .await
        .expect("went on after the skip");
    let status = consumer_status(&store, &panicky).await.expect("status");
    assert_eq!(
        (status.state, status.events_seen, status.last_error),
        ("live", 3001, None)
    );
    let listed = checkpoint::skipped(&store, "panicky")
        .await
        .expect("skipped");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].error.contains("cannot handle warehouse BOOM"));
    assert!(matches!(
        checkpoint::skip(&store, "panicky", None, "test")
            .await
            .expect("skip"),
        SkipOutcome::NotFailed
    ));
}

async fn a_refused_transfer_in_fails_the_reactor_on_its_event(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let transfers = Consumer::Reactor(Arc::new(TransferProcess));
    let stock = Consumer::Projection(Arc::new(StockProjection::default()));
    let (_stop, _tasks) = run(
        &store,
        vec![(transfers.clone(), quick()), (stock.clone(), quick())],
    )
    .await;
    let executor = CommandExecutor::<StockItem>::new(store.clone());
    receive(&executor, "W1", "P1", 10).await;
    // A transfer to its own warehouse: the aggregate refuses the
    // transfer-in (the HTTP API never writes one; an older writer could).
    let bad = append_raw_event(
        &store,
        "StockItem",
        "default/W5/P1",
        "StockTransferredOut",
        &json!({"StockTransferredOut": {
            "warehouse_id": "W5", "product_id": "P1", "to_warehouse_id": "W5",
            "qty": "1", "transfer_id": "T-BAD",
            "allocations": [{"batch": null, "expiry_date": null, "qty": "1"}]}}),
    )
    .await
    .expect("append");
    transfer(&executor, "W1", "W2", 4).await;

    let failed = wait_for_status(&store, &transfers, Duration::from_secs(30), |status| {
        status.state == "failed"
    })
    .await
    .expect("transfers failed");
    assert_eq!(failed.failed_event_id, Some(bad));
    assert!(
        failed
            .last_error
            .as_deref()
            .is_some_and(|error| error.contains("refused")),
        "{failed:?}"
    );
    // Nothing after the refused event was booked yet.
    assert_eq!(count_events(&store, "StockTransferredIn").await, 0);

    let SkipOutcome::Skipped(_) =
        checkpoint::skip(&store, "transfers", transfers.aggregate_types(), "test")
            .await
            .expect("skip")
    else {
        panic!("nothing to skip");
    };
    wait_caught_up(&store, &["transfers", "stock"], Duration::from_secs(30))
        .await
        .expect("caught up");
    let deadline = Instant::now() + Duration::from_secs(20);
    while on_hand(&store, "W2").await.as_deref() != Some("4") {
        assert!(
            Instant::now() < deadline,
            "the later transfer never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count_events(&store, "StockTransferredIn").await, 1);
}

async fn a_contended_transfer_in_is_retried_and_the_stock_arrives(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let transfers = Consumer::Reactor(Arc::new(TransferProcess));
    let contended = RunnerSettings {
        contend_first_reactions: 5,
        ..quick()
    };
    let (_stop, _tasks) = run(
        &store,
        vec![
            (transfers.clone(), contended),
            (
                Consumer::Projection(Arc::new(StockProjection::default())),
                quick(),
            ),
        ],
    )
    .await;
    let executor = CommandExecutor::<StockItem>::new(store.clone());
    receive(&executor, "W1", "P1", 10).await;
    transfer(&executor, "W1", "W2", 3).await;
    transfer(&executor, "W1", "W3", 2).await;
    wait_caught_up(&store, &["transfers"], Duration::from_secs(30))
        .await
        .expect("transfers caught up");
    wait_caught_up(&store, &["stock"], Duration::from_secs(30))
        .await
        .expect("stock caught up");
    assert_eq!(on_hand(&store, "W2").await.as_deref(), Some("3"));
    assert_eq!(on_hand(&store, "W3").await.as_deref(), Some("2"));
    assert_eq!(on_hand(&store, "W1").await.as_deref(), Some("5"));
    let status = consumer_status(&store, &transfers).await.expect("status");
    assert_eq!((status.state, status.last_error), ("live", None));
    assert_eq!(count_events(&store, "StockTransferredIn").await, 2);
}

async fn a_reactor_killed_between_its_commands_and_its_checkpoint_repeats_nothing(
    backend: Backend,
) {
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let executor = CommandExecutor::<StockItem>::new(store.clone());
    receive(&executor, "W1", "P1", 1000).await;
    for _ in 0..50 {
        transfer(&executor, "W1", "W2", 1).await;
    }
    // One batch must hold all 50: on PostgreSQL wait until no open
    // transaction (another test's) keeps any of them unsettled.
    karvon_tests::wait_settled(&store).await;
    let transfers = Consumer::Reactor(Arc::new(TransferProcess));
    let stalling = RunnerSettings {
        pause_before_checkpoint: Duration::from_secs(600),
        ..quick()
    };
    let (stop, tasks) = run(&store, vec![(transfers.clone(), stalling)]).await;
    // Every transfer-in is booked; the step stalls before its checkpoint.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_events(&store, "StockTransferredIn").await < 50 {
        assert!(Instant::now() < deadline, "the reactor booked nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stored_checkpoint(&store, "transfers")
            .await
            .expect("checkpoint"),
        Some(karvon_projections::Position::START),
        "the checkpoint moved before the pause"
    );
    for task in tasks {
        task.abort();
    }
    drop(stop);

    // A fresh runner repeats the batch: every command answers from its key.
    let (_stop, _tasks) = run(
        &store,
        vec![
            (transfers, quick()),
            (
                Consumer::Projection(Arc::new(StockProjection::default())),
                quick(),
            ),
        ],
    )
    .await;
    wait_caught_up(&store, &["transfers", "stock"], Duration::from_secs(30))
        .await
        .expect("caught up");
    assert_eq!(count_events(&store, "StockTransferredIn").await, 50);
    assert_eq!(on_hand(&store, "W2").await.as_deref(), Some("50"));
    assert_eq!(on_hand(&store, "W1").await.as_deref(), Some("950"));
}

on_both_backends!(
    a_panicking_consumer_stops_alone_and_skip_moves_it_on,
    a_refused_transfer_in_fails_the_reactor_on_its_event,
    a_contended_transfer_in_is_retried_and_the_stock_arrives,
    a_reactor_killed_between_its_commands_and_its_checkpoint_repeats_nothing,
);

/// PostgreSQL: a reactor's commands commit on their own, so while it works
/// through a batch of 1,000 the projections' horizon keeps moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_pass_events_committed_while_a_reactor_works_through_a_batch() {
    let db = TestDb::create().await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let executor = CommandExecutor::<StockItem>::new(store.clone());
    receive(&executor, "W1", "P1", 5000).await;
    for _ in 0..1000 {
        transfer(&executor, "W1", "W2", 1).await;
    }
    let transfers = Consumer::Reactor(Arc::new(TransferProcess));
    let slow_checkpoint = RunnerSettings {
        pause_before_checkpoint: Duration::from_secs(5),
        ..quick()
    };
    let (_stop, _tasks) = run(
        &store,
        vec![
            (transfers.clone(), slow_checkpoint),
            (
                Consumer::Projection(Arc::new(StockProjection::default())),
                quick(),
            ),
        ],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_events(&store, "StockTransferredIn").await == 0 {
        assert!(Instant::now() < deadline, "the reactor never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Committed while the reactor is inside its batch.
    receive(&executor, "W9", "P1", 7).await;
    let deadline = Instant::now() + Duration::from_secs(4);
    while on_hand(&store, "W9").await.as_deref() != Some("7") {
        assert!(
            Instant::now() < deadline,
            "the stock projection was held back by the reactor's batch"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reactor = consumer_status(&store, &transfers).await.expect("status");
    assert_eq!(
        reactor.events_seen, 0,
        "the reactor had finished its batch; the test proves nothing"
    );
    wait_caught_up(&store, &["transfers", "stock"], Duration::from_secs(60))
        .await
        .expect("caught up");
    assert_eq!(on_hand(&store, "W2").await.as_deref(), Some("1000"));
    let statuses = runner::status(&store, &[transfers]).await.expect("status");
    assert_eq!(statuses[0].state, "live");
}

/// The admin API's view of one consumer, polled until `check` holds.
async fn admin_status(
    app: &karvon_tests::TestApp,
    name: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = app.get("/api/v1/admin/projections").await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        let item = body["data"]["items"]
            .as_array()
            .and_then(|items| items.iter().find(|item| item["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} is not listed: {body}"));
        if check(&item) {
            return item;
        }
        assert!(Instant::now() < deadline, "{name} never got there: {item}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn an_undecodable_event_stops_only_the_consumers_that_read_its_type(backend: Backend) {
    use karvon_tests::{product, spawn_app};
    use reqwest::StatusCode;

    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    app.post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "5"});
    let (status, body) = app.post("/api/v1/stock/receipts", &receipt).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // A stock event whose payload does not decode (a buggy older writer).
    let bad = append_raw_event(
        &app.db,
        "StockItem",
        "default/W7/P1",
        "StockReceived",
        &json!({"StockReceived": {"warehouse_id": 7}}),
    )
    .await
    .expect("append");
    let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "3"});
    app.post("/api/v1/stock/receipts", &receipt).await;
    let (_, registered) = app
        .post("/api/v1/products", &product("P2", "dairy", None))
        .await;

    // The catalogue never reads stock events: it goes on.
    let (status, body) = app
        .get_after("/api/v1/products/P2", &registered["data"]["position"])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Stock stops on the event, with the error and the event shown.
    let stock = admin_status(&app, "stock", |item| item["state"] == "failed").await;
    assert_eq!(stock["kind"], "projection");
    assert_eq!(stock["failed_event_id"], bad.to_string());
    assert!(
        stock["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("StockReceived")),
        "{stock}"
    );
    assert_eq!(stock["lag_events"], 3, "{stock}");
    // The transfer reactor reads stock events too, but not this type's
    // payload: it goes on.
    let transfers = admin_status(&app, "transfers", |item| item["lag_events"] == 0).await;
    assert_eq!(
        (&transfers["kind"], &transfers["state"]),
        (&json!("reactor"), &json!("live"))
    );
    let catalog = admin_status(&app, "catalog", |item| item["lag_events"] == 0).await;
    assert_eq!(catalog["state"], "live");
    let (_, levels) = app
        .get("/api/integrations/inventory-levels?warehouse_id=W1")
        .await;
    assert_eq!(levels["data"]["items"][0]["on_hand"], "5", "{levels}");

    // Retrying changes nothing: it fails on the same event again.
    let (status, body) = app
        .post("/api/v1/admin/projections/stock/retry", &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let stock = admin_status(&app, "stock", |item| item["state"] == "failed").await;
    assert_eq!(stock["failed_event_id"], bad.to_string());

    // Skip: the event is kept with its error, and stock goes on.
    let (status, body) = app
        .post("/api/v1/admin/projections/stock/skip", &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["event_id"], bad.to_string());
    admin_status(&app, "stock", |item| {
        item["state"] == "live" && item["lag_events"] == 0
    })
    .await;
    let (_, levels) = app
        .get("/api/integrations/inventory-levels?warehouse_id=W1")
        .await;
    assert_eq!(levels["data"]["items"][0]["on_hand"], "8", "{levels}");
    let (status, body) = app.get("/api/v1/admin/projections/stock/skipped").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items = body["data"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{body}");
    assert_eq!(items[0]["event_id"], bad.to_string());
    assert!(
        items[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("StockReceived"))
    );
    assert!(
        items[0]["skipped_by"]
            .as_str()
            .is_some_and(|by| by.starts_with("key:"))
    );

    // Nothing left to retry or skip; unknown consumers are 404.
    for action in ["retry", "skip"] {
        let (status, body) = app
            .post(
                &format!("/api/v1/admin/projections/stock/{action}"),
                &json!({}),
            )
            .await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::CONFLICT, &json!("not_failed"))
        );
        let (status, _) = app
            .post(
                &format!("/api/v1/admin/projections/nonsense/{action}"),
                &json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _) = app
        .post("/api/v1/admin/projections/transfers/rebuild", &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a reactor has no read model");
    app.stop().await.expect("stop");
}

on_both_backends!(an_undecodable_event_stops_only_the_consumers_that_read_its_type);
