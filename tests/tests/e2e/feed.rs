//! The global feed under stress: concurrent writers with out-of-order
//! commits, and runners killed mid-batch. The read model must always equal
//! a full replay of the stored events: nothing skipped, nothing doubled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use karvon_adapters::feed;
use karvon_adapters::read_models::stock::StockProjection;
use karvon_adapters::runner;
use karvon_adapters::runner::{Consumer, Runner, RunnerSettings};
use karvon_adapters::store::{CommandError, CommandExecutor};
use karvon_domain::stock::{StockCommand, StockEvent, StockItem};
use karvon_domain::{Id, Money, Quantity};
use karvon_projections::{EventMetadata, Position, names};
use karvon_tests::{
    Backend, Db, TestDb, append_raw_receipts, checkpoint, projected_stock, replayed_stock,
    replayed_stock_until, spawn_app, wait_caught_up,
};
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

fn load_seconds() -> u64 {
    std::env::var("KARVON_TEST_LOAD_SECS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(10)
}

fn metadata() -> EventMetadata {
    karvon_tests::system_metadata()
}

fn id(value: &str) -> Id {
    Id::parse(value).expect("id")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_writers_and_a_held_transaction_end_equal_to_a_full_replay() {
    let db = TestDb::create().await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let pool = db.pool().await.expect("pool");
    let store = Db::Postgres(pool.clone());
    let stock = Arc::new(CommandExecutor::<StockItem>::new(store.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));

    let mut writers = Vec::new();
    for writer in 0..8u64 {
        let (stock, stop, appended) = (stock.clone(), stop.clone(), appended.clone());
        writers.push(tokio::spawn(async move {
            let mut step = writer;
            while !stop.load(Ordering::Relaxed) {
                step += 7;
                // 12 shared items: writers collide and must retry.
                let warehouse = id(&format!("W{}", step % 3));
                let product = id(&format!("P{}", step % 4));
                let stream = format!("default/{warehouse}/{product}");
                let command = match step % 5 {
                    0..=2 => StockCommand::Receive {
                        warehouse_id: warehouse,
                        product_id: product,
                        qty: Quantity::parse(Decimal::from(step % 9 + 1)).expect("qty"),
                        batch: (step % 2 == 0).then(|| format!("B{}", step % 4)),
                        expiry_date: (step % 2 == 0).then(|| "2027-01-01".parse().expect("date")),
                        unit_cost: None,
                        supplier_id: None,
                        purchase_order_id: None,
                    },
                    3 => StockCommand::Issue {
                        warehouse_id: warehouse,
                        product_id: product,
                        qty: Quantity::parse(Decimal::from(step % 4 + 1)).expect("qty"),
                        reason: "load".into(),
                    },
                    _ => StockCommand::Adjust {
                        warehouse_id: warehouse,
                        product_id: product,
                        counted_qty: Money::parse(Decimal::from(step % 30)).expect("count"),
                        reason: "count".into(),
                    },
                };
                match stock.execute(&stream, command, &metadata()).await {
                    Ok(_) => {
                        appended.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(CommandError::Domain(_) | CommandError::Contended) => {}
                    Err(error) => panic!("writer failed: {error}"),
                }
            }
        }));
    }

    // Out-of-order commit on purpose: this transaction takes a feed
    // position early and commits after many later positions.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut held = PgConnection::connect(&db.url).await.expect("connect");
    let mut transaction = held.begin().await.expect("begin");
    let payload = serde_json::json!({"StockReceived": {
        "warehouse_id": "HELD", "product_id": "P0", "qty": "5", "batch": null, "expiry_date": null,
        "unit_cost": null, "supplier_id": null, "purchase_order_id": null}});
    let (held_txid, held_position): (String, i64) = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('StockItem', 'default/HELD/P0', 1, 'StockReceived', '1', $1, '{\"tenant_id\":\"default\"}')
         RETURNING transaction_id::text, global_position",
    )
    .bind(payload)
    .fetch_one(&mut *transaction)
    .await
    .expect("held insert");
    let held_txid: u64 = held_txid.parse().expect("txid");
    let hold_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < hold_until {
        if let Some(at) = checkpoint(&store, names::STOCK).await.expect("checkpoint") {
            assert!(
                at.transaction_id < held_txid,
                "the projection passed an open transaction: {at} vs {held_txid}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let later_commits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE global_position > $1")
            .bind(held_position)
            .fetch_one(&pool)
            .await
            .expect("count");
    assert!(
        later_commits > 0,
        "no later event committed while the transaction was held"
    );
    transaction.commit().await.expect("commit held");

    tokio::time::sleep(Duration::from_secs(load_seconds().saturating_sub(4))).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    wait_caught_up(&store, &[names::STOCK], Duration::from_secs(60))
        .await
        .expect("caught up");

    let (expected, stock_events) = replayed_stock(&store).await.expect("replay");
    let (actual, movements) = projected_stock(&store).await.expect("projection");
    assert_eq!(stock_events as u64, appended.load(Ordering::Relaxed) + 1);
    assert_eq!(movements, stock_events, "one movement row per stock event");
    assert_eq!(
        actual, expected,
        "the read model differs from a full replay"
    );
    // Command handling decides from snapshots; they must agree with the
    // events too (a snapshot counting an event twice would let an issue
    // through that the stock cannot cover).
    for ((tenant, warehouse, product), (on_hand, _)) in &expected {
        if warehouse == "HELD" {
            continue; // appended behind the store's back, without a snapshot
        }
        let item = stock
            .load(&format!("{tenant}/{warehouse}/{product}"))
            .await
            .expect("load");
        assert_eq!(
            &item.on_hand().normalize().to_string(),
            on_hand,
            "snapshot of {warehouse}/{product}"
        );
    }
    assert!(
        actual.contains_key(&("default".into(), "HELD".into(), "P0".into())),
        "the held event was skipped"
    );
    eprintln!(
        "8 writers appended {} events in {}s",
        stock_events,
        load_seconds()
    );
    app.stop().await.expect("stop");
}

async fn prepared_feed(db: &TestDb) -> Db {
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    append_raw_receipts(&store, "BULK", 4000, 37)
        .await
        .expect("append");
    append_raw_receipts(&store, "MORE", 1000, 11)
        .await
        .expect("append");
    store
}

/// A stock runner that stalls between applying a batch and writing its
/// checkpoint: the window a crash must not leave half-applied.
fn slow_runner(store: &Db, instance: &str) -> Runner {
    let settings = RunnerSettings {
        batch_size: 300,
        instance: instance.into(),
        retry_backoff: Duration::from_millis(100),
        pause_before_checkpoint: Duration::from_millis(400),
        ..RunnerSettings::default()
    };
    Runner::new(
        store.clone(),
        Consumer::Projection(Arc::new(StockProjection::default())),
        settings,
    )
}

async fn wait_for_progress(store: &Db, events: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = runner::status(
            store,
            &karvon_adapters::registry::Registry::default().consumers(),
        )
        .await
        .expect("status")
        .iter()
        .find(|status| status.name == names::STOCK)
        .map_or(0, |status| status.events_seen);
        if seen >= events {
            return;
        }
        assert!(Instant::now() < deadline, "runner made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_matches_replay(store: &Db) {
    let (expected, events) = replayed_stock(store).await.expect("replay");
    let (actual, movements) = projected_stock(store).await.expect("projection");
    assert_eq!(movements, events, "events applied twice or skipped");
    assert_eq!(actual, expected);
}

async fn aborting_the_runner_mid_batch_rolls_the_batch_back(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let store = prepared_feed(&db).await;
    let (_stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(slow_runner(&store, "doomed").run(stop.clone()));
    wait_for_progress(&store, 600).await;
    // Land inside a batch: its rows are written, its checkpoint is not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // What survived is exactly the events up to the checkpoint.
    let at = checkpoint(&store, names::STOCK)
        .await
        .expect("checkpoint")
        .expect("row");
    let (expected, events) = replayed_stock_until(&store, Some(at))
        .await
        .expect("replay");
    let (actual, movements) = projected_stock(&store).await.expect("projection");
    assert_eq!(movements, events);
    assert_eq!(actual, expected, "a half-applied batch survived the crash");
    assert!(events < 5000, "the runner finished before it was killed");

    let task = tokio::spawn(
        Runner::new(
            store.clone(),
            Consumer::Projection(Arc::new(StockProjection::default())),
            RunnerSettings::default(),
        )
        .run(stop),
    );
    wait_caught_up(&store, &[names::STOCK], Duration::from_secs(30))
        .await
        .expect("caught up");
    assert_matches_replay(&store).await;
    task.abort();
}

#[tokio::test]
async fn dropping_the_runner_connection_mid_batch_neither_doubles_nor_skips() {
    let db = TestDb::create().await.expect("db");
    let store = prepared_feed(&db).await;
    let pool = db.pool().await.expect("pool");
    let (_stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(slow_runner(&store, "cut").run(stop));
    wait_for_progress(&store, 600).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'karvon-runner:stock:cut'",
    )
    .fetch_all(&pool)
    .await
    .expect("terminate");
    assert_eq!(killed, [true]);
    // The runner reconnects by itself and carries on from its checkpoint.
    wait_caught_up(&store, &[names::STOCK], Duration::from_secs(60))
        .await
        .expect("caught up");
    assert_matches_replay(&store).await;
    task.abort();
}

#[test]
fn stock_events_used_here_are_the_domain_ones() {
    // Guards the raw payloads above against silent renames in the domain.
    let raw = serde_json::json!({"StockReceived": {"warehouse_id": "W", "product_id": "P", "qty": "1", "batch": null,
        "expiry_date": null, "unit_cost": null, "supplier_id": null, "purchase_order_id": null}});
    assert!(serde_json::from_value::<StockEvent>(raw).is_ok());
}

on_both_backends!(aborting_the_runner_mid_batch_rolls_the_batch_back);

/// Inserts `count` events, every third an `Alpha`, the rest `Beta`, through
/// `conn` (the caller decides when they commit).
async fn append_mixed(conn: &mut PgConnection, tag: &str, count: i64) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT CASE WHEN g % 3 = 0 THEN 'Alpha' ELSE 'Beta' END, $1 || g, 1, 'Happened', '1',
                jsonb_build_object('n', g), jsonb_build_object('tenant_id', 'default')
           FROM generate_series(0, $2 - 1) AS g",
    )
    .bind(tag)
    .bind(count)
    .execute(conn)
    .await
    .expect("append");
}

/// Reads the feed as a consumer of `Alpha` would, `limit` at a time, until
/// nothing is new: the events read (aggregate ids) and where it stopped.
async fn read_alphas(
    pool: &sqlx::PgPool,
    mut after: Position,
    limit: i64,
) -> (Vec<String>, Position) {
    use karvon_adapters::db::AsConn;
    let mut conn = pool.acquire().await.expect("conn");
    let mut read = Vec::new();
    loop {
        let batch = feed::read_batch(&mut conn.as_conn(), after, limit, Some(&["Alpha"]))
            .await
            .expect("read");
        assert!(batch.events.len() as i64 <= limit);
        assert!(
            batch
                .events
                .iter()
                .all(|event| event.aggregate_type == "Alpha")
        );
        read.extend(batch.events.iter().map(|event| event.aggregate_id.clone()));
        match batch.last {
            Some(last) => {
                assert!(last > after, "the checkpoint went backwards");
                after = last;
            }
            None => return (read, after),
        }
    }
}

/// A consumer reads only its aggregate types, in feed order, and passes
/// the others without reading them; it never passes an event whose
/// transaction is still open, even when later ones have committed.
#[tokio::test]
async fn a_consumer_reads_only_its_types_and_never_passes_an_open_transaction() {
    let db = TestDb::create().await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let pool = db.pool().await.expect("pool");
    let mut writer = pool.acquire().await.expect("conn");
    append_mixed(&mut writer, "a", 30).await;

    let expected: Vec<String> = (0..30)
        .filter(|g| g % 3 == 0)
        .map(|g| format!("a{g}"))
        .collect();
    let (read, stopped) = read_alphas(&pool, Position::START, 4).await;
    assert_eq!(
        read, expected,
        "every Alpha once, in order, and nothing else"
    );
    let head: (String, i64) = sqlx::query_as(
        "SELECT transaction_id::text, global_position FROM events
          ORDER BY transaction_id DESC, global_position DESC LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .expect("head");
    assert_eq!(
        stopped.to_string(),
        format!("{}.{}", head.0, head.1),
        "stopped at the last event, a Beta"
    );
    {
        use karvon_adapters::db::AsConn;
        let mut conn = pool.acquire().await.expect("conn");
        let next = feed::peek(&mut conn.as_conn(), Position::START, Some(&["Alpha"]))
            .await
            .expect("peek")
            .expect("an Alpha");
        assert_eq!(next.aggregate_id, "a0");
        let next = feed::peek(&mut conn.as_conn(), Position::START, Some(&["Beta"]))
            .await
            .expect("peek")
            .expect("a Beta");
        assert_eq!(next.aggregate_id, "a1");
    }

    // An Alpha held in an open transaction; Betas and Alphas committed after it.
    let mut held = PgConnection::connect(&db.url).await.expect("connect");
    let mut held_tx = held.begin().await.expect("begin");
    append_mixed(&mut held_tx, "held", 1).await;
    append_mixed(&mut writer, "later", 6).await;
    let (read, still) = read_alphas(&pool, stopped, 4).await;
    assert!(read.is_empty(), "read past an open transaction: {read:?}");
    assert_eq!(still, stopped, "the checkpoint passed an open transaction");

    held_tx.commit().await.expect("commit");
    let (read, _) = read_alphas(&pool, stopped, 4).await;
    assert_eq!(read, ["held0", "later0", "later3"]);
}
