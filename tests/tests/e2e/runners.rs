//! Leadership: two runners on one projection, only one active; killing it
//! lets the standby take over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use karvon_adapters::read_models::stock::StockProjection;
use karvon_adapters::runner::{Consumer, Runner, RunnerSettings};
use karvon_projections::names;
use karvon_tests::{
    Db, TestDb, append_raw_receipts, projected_stock, replayed_stock, wait_caught_up,
};
use sqlx::PgPool;
use tokio::sync::watch;

async fn active_instances(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()
            AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended('karvon.feed.stock', 0)
            AND a.application_name LIKE 'karvon-runner:stock:%'",
    )
    .fetch_all(pool)
    .await
    .expect("locks")
}

async fn wait_for_single_leader(pool: &PgPool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let active = active_instances(pool).await;
        assert!(active.len() <= 1, "two active runners: {active:?}");
        if let [leader] = active.as_slice() {
            return leader.clone();
        }
        assert!(Instant::now() < deadline, "no runner became active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn only_one_runner_is_active_and_the_standby_takes_over() {
    let db = TestDb::create().await.expect("db");
    let pool = db.pool().await.expect("pool");
    let store = Db::Postgres(pool.clone());
    store.migrate().await.expect("migrate");
    let (_stop_tx, stop) = watch::channel(false);
    let mut tasks = HashMap::new();
    for instance in ["a", "b"] {
        let settings = RunnerSettings {
            instance: instance.into(),
            standby_interval: Duration::from_millis(100),
            ..RunnerSettings::default()
        };
        let runner = Runner::new(
            store.clone(),
            Consumer::Projection(Arc::new(StockProjection::default())),
            settings,
        );
        tasks.insert(
            format!("karvon-runner:stock:{instance}"),
            tokio::spawn(runner.run(stop.clone())),
        );
    }

    let leader = wait_for_single_leader(&pool).await;
    append_raw_receipts(&store, "FIRST", 2000, 13)
        .await
        .expect("append");
    wait_caught_up(&store, &[names::STOCK], Duration::from_secs(20))
        .await
        .expect("caught up");
    assert_eq!(
        active_instances(&pool).await,
        std::slice::from_ref(&leader),
        "leadership moved without a failure"
    );

    tasks.remove(&leader).expect("leader task").abort();
    append_raw_receipts(&store, "SECOND", 2000, 17)
        .await
        .expect("append");
    wait_caught_up(&store, &[names::STOCK], Duration::from_secs(20))
        .await
        .expect("the standby took over");
    let new_leader = wait_for_single_leader(&pool).await;
    assert_ne!(new_leader, leader);

    let (expected, events) = replayed_stock(&store).await.expect("replay");
    let (actual, movements) = projected_stock(&store).await.expect("projection");
    assert_eq!((movements, actual), (events, expected));
    for task in tasks.into_values() {
        task.abort();
    }
}
