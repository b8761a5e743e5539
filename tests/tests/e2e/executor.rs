//! The command executor: state kept warm between commands is only trusted
//! as far as the append confirms it, and a hot stream queues instead of
//! colliding.

use std::sync::Arc;

use karvon_adapters::store::{CommandError, CommandExecutor, SNAPSHOT_EVERY, commit_batch};
use karvon_domain::stock::{StockCommand, StockError, StockItem};
use karvon_domain::{Id, Money, Quantity};
use karvon_tests::{Backend, TestDb, fetch_strings, system_metadata};
use rust_decimal::Decimal;

fn id(value: &str) -> Id {
    Id::parse(value).expect("id")
}

fn receive(qty: i64) -> StockCommand {
    StockCommand::Receive {
        warehouse_id: id("W1"),
        product_id: id("P1"),
        qty: Quantity::parse(Decimal::from(qty)).expect("qty"),
        batch: None,
        expiry_date: None,
        unit_cost: None,
        supplier_id: None,
        purchase_order_id: None,
    }
}

const STREAM: &str = "default/W1/P1";

async fn on_hand(executor: &CommandExecutor<StockItem>) -> Decimal {
    executor.load(STREAM).await.expect("load").on_hand()
}

/// Two instances (two executors) write one stream: each one's warm state
/// goes stale when the other writes, and no command is decided on it.
async fn a_stale_warm_state_never_decides_a_command(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let a = CommandExecutor::<StockItem>::new(store.clone());
    let b = CommandExecutor::<StockItem>::new(store.clone());
    let metadata = system_metadata();
    a.execute(STREAM, receive(10), &metadata).await.expect("a");
    b.execute(STREAM, receive(5), &metadata).await.expect("b");

    // A still remembers 10 on hand: an issue of 12 must not be refused.
    let issue = StockCommand::Issue {
        warehouse_id: id("W1"),
        product_id: id("P1"),
        qty: Quantity::parse(Decimal::from(12)).expect("qty"),
        reason: "sold".into(),
    };
    a.execute(STREAM, issue, &metadata).await.expect("issue");
    assert_eq!(on_hand(&b).await, Decimal::from(3));

    // B remembers 15: counting 3 must not look like "nothing changed" to it,
    // and counting 7 must adjust by +4, not by -8.
    let count = |qty: i64| StockCommand::Adjust {
        warehouse_id: id("W1"),
        product_id: id("P1"),
        counted_qty: Money::parse(Decimal::from(qty)).expect("qty"),
        reason: "count".into(),
    };
    b.execute(STREAM, count(7), &metadata).await.expect("count");
    assert_eq!(on_hand(&a).await, Decimal::from(7));
    // A remembers 3 (its own issue): counting 7 again must adjust by 0
    // (a count is recorded even when it matches), not by +4.
    a.execute(STREAM, count(7), &metadata).await.expect("count");
    let deltas = fetch_strings(
        &store,
        match backend {
            Backend::Postgres => {
                "SELECT payload -> 'StockAdjusted' ->> 'delta' FROM events
                  WHERE event_type = 'StockAdjusted' ORDER BY sequence"
            }
            Backend::Sqlite => {
                "SELECT json_extract(payload, '$.StockAdjusted.delta') FROM events
                  WHERE event_type = 'StockAdjusted' ORDER BY sequence"
            }
        },
    )
    .await
    .expect("deltas");
    assert_eq!(deltas, ["4", "0"]);
    assert_eq!(on_hand(&b).await, Decimal::from(7));

    // And a refusal is a refusal on current state too.
    let too_much = StockCommand::Issue {
        warehouse_id: id("W1"),
        product_id: id("P1"),
        qty: Quantity::parse(Decimal::from(8)).expect("qty"),
        reason: "sold".into(),
    };
    let refused = b.execute(STREAM, too_much, &metadata).await;
    assert!(
        matches!(
            refused,
            Err(CommandError::Domain(StockError::InsufficientStock { .. }))
        ),
        "{refused:?}"
    );
}

/// Sixty-four concurrent receipts on one stream through one executor: all
/// succeed (none answers Contended), none is lost or doubled.
async fn a_hot_stream_queues_instead_of_failing(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let executor = Arc::new(CommandExecutor::<StockItem>::new(store.clone()));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let executor = executor.clone();
            tokio::spawn(async move {
                executor
                    .execute(STREAM, receive(1), &system_metadata())
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("every receipt is taken");
    }
    assert_eq!(on_hand(&executor).await, Decimal::from(64));
}

/// A stream written in batches keeps its snapshot only every
/// `SNAPSHOT_EVERY` events: loading it cold applies the events stored
/// after the snapshot, and a single command then continues the stream.
async fn a_stream_loads_whole_from_a_snapshot_behind_it(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let writer = CommandExecutor::<StockItem>::new(store.clone());
    let metadata = system_metadata();
    let receipts = SNAPSHOT_EVERY as i64 + 8;
    for qty in 1..=receipts {
        // Loaded from storage each time: a wrong replay would decide on a
        // stale sequence and the commit would conflict.
        let loaded = writer.load_many(&[STREAM.to_string()]).await.expect("load");
        let write = loaded[0]
            .handle(receive(qty))
            .await
            .expect("decide")
            .expect("a receipt writes");
        commit_batch(&store, &[write], &metadata)
            .await
            .expect("commit");
    }
    let snapshot = fetch_strings(&store, "SELECT CAST(last_sequence AS TEXT) FROM snapshots")
        .await
        .expect("snapshot");
    assert_eq!(
        snapshot,
        vec![SNAPSHOT_EVERY.to_string()],
        "the snapshot is behind"
    );
    let total = receipts * (receipts + 1) / 2;
    let cold = CommandExecutor::<StockItem>::new(store.clone());
    assert_eq!(on_hand(&cold).await, Decimal::from(total));

    cold.execute(STREAM, receive(1), &metadata)
        .await
        .expect("a single command after the batches");
    let fresh = CommandExecutor::<StockItem>::new(store.clone());
    assert_eq!(on_hand(&fresh).await, Decimal::from(total + 1));
    let events = fetch_strings(
        &store,
        "SELECT CAST(count(*) AS TEXT) || '/' || CAST(max(sequence) AS TEXT) FROM events",
    )
    .await
    .expect("events");
    assert_eq!(events, vec![format!("{n}/{n}", n = receipts + 1)]);
}

/// Several instances (executors) writing one stream at once, without
/// idempotency keys: each command answered is stored exactly once. A load
/// that read the snapshot before a concurrent commit and the events after
/// it used to commit on SQLite and then report a conflict (sqlite-es
/// checks the snapshot update after its commit), so the command ran twice.
async fn concurrent_writers_store_each_answered_command_once(backend: Backend) {
    const WRITERS: usize = 4;
    const TASKS: usize = 4;
    const COMMANDS: usize = 60;
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let writers: Vec<Arc<CommandExecutor<StockItem>>> = (0..WRITERS)
        .map(|_| Arc::new(CommandExecutor::new(store.clone())))
        .collect();
    let mut tasks = Vec::new();
    for writer in &writers {
        for _ in 0..TASKS {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                let mut answered = 0u64;
                for _ in 0..COMMANDS {
                    let mut metadata = system_metadata();
                    metadata.response_id = Some(uuid::Uuid::new_v4().to_string());
                    match writer.execute(STREAM, receive(1), &metadata).await {
                        Ok(_) => answered += 1,
                        Err(CommandError::Contended) => {}
                        Err(other) => panic!("{other}"),
                    }
                }
                answered
            }));
        }
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await.expect("task");
    }
    let stored: Vec<String> = fetch_strings(
        &store,
        "SELECT CAST(count(*) AS TEXT) FROM events WHERE aggregate_type = 'StockItem'",
    )
    .await
    .expect("count");
    assert_eq!(
        stored[0],
        answered.to_string(),
        "events = answered commands"
    );
    let response_id = match backend {
        Backend::Postgres => "metadata ->> 'response_id'",
        Backend::Sqlite => "json_extract(metadata, '$.response_id')",
    };
    let doubled: Vec<String> = fetch_strings(
        &store,
        &format!(
            "SELECT CAST(count(*) AS TEXT) FROM (
               SELECT {response_id} FROM events GROUP BY 1 HAVING count(*) > 1) AS twice"
        ),
    )
    .await
    .expect("doubles");
    assert_eq!(doubled[0], "0", "a response id stored twice");
    assert_eq!(
        on_hand(&writers[0]).await,
        Decimal::from(answered),
        "on hand = answered receipts"
    );
    assert!(answered > 0);
}

on_both_backends!(
    concurrent_writers_store_each_answered_command_once,
    a_stale_warm_state_never_decides_a_command,
    a_hot_stream_queues_instead_of_failing,
    a_stream_loads_whole_from_a_snapshot_behind_it,
);
