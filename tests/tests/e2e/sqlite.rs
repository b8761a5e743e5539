//! What only the embedded SQLite backend promises.

use karvon_tests::{Backend, Db, TestDb, product, spawn_app};

#[tokio::test]
async fn the_sqlite_store_is_one_wal_file_that_syncs_every_commit() {
    let db = TestDb::create_on(Backend::Sqlite).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let Db::Sqlite(sqlite) = &app.db else {
        panic!("not SQLite");
    };
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&sqlite.writer)
        .await
        .expect("journal mode");
    assert_eq!(journal, "wal");
    // 2 = FULL: an acknowledged command survives a power cut, not just a
    // process crash.
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&sqlite.writer)
        .await
        .expect("synchronous");
    assert_eq!(synchronous, 2);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&sqlite.readers)
    .await
    .expect("tables");
    for table in [
        "events",
        "snapshots",
        "command_log",
        "projection_checkpoints",
        "catalog_products",
        "stock_levels",
        "stock_movements",
        "api_keys",
    ] {
        assert!(
            tables.iter().any(|name| name == table),
            "{table} missing: {tables:?}"
        );
    }

    // Event ids are UUIDv7 here too, stamped with the append time.
    let (status, _) = app
        .post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events")
        .fetch_all(&sqlite.readers)
        .await
        .expect("ids");
    let id = uuid::Uuid::parse_str(&ids[0]).expect("a UUID");
    assert_eq!(id.get_version_num(), 7, "{id}");
    let (seconds, _) = id.get_timestamp().expect("timestamp").to_unix();
    let now = chrono::Utc::now().timestamp() as u64;
    assert!(
        now.abs_diff(seconds) < 60,
        "{id} is stamped {seconds}, now {now}"
    );
    app.stop().await.expect("stop");
}
