//! Rebuild: replay from zero into fresh tables, swap, and keep answering
//! queries throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use karvon_projections::names;
use karvon_tests::{
    Backend, TestDb, append_raw_receipts, fetch_strings, product, projected_stock, replayed_stock,
    spawn_app, table_dump, test_config, wait_caught_up,
};
use reqwest::StatusCode;
use serde_json::json;

async fn rebuild_equals_the_live_model_and_queries_keep_answering(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    for index in 0..20 {
        app.post(
            "/api/v1/products",
            &product(&format!("P{index}"), "general", Some("50")),
        )
        .await;
    }
    append_raw_receipts(&app.db, "BULK", 20_000, 20)
        .await
        .expect("append");
    app.post(
        "/api/v1/stock/receipts",
        &json!({"warehouse_id": "LIVE0", "product_id": "P3", "qty": 5, "batch": "X"}),
    )
    .await;
    let (status, body) = app
        .post(
            "/api/v1/stock/issues",
            &json!({"warehouse_id": "LIVE0", "product_id": "P3", "qty": 2, "reason": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.post("/api/v1/products/P7/discontinue", &json!({}))
        .await;
    wait_caught_up(
        &app.db,
        &[names::CATALOG, names::STOCK, names::TRANSFERS],
        Duration::from_secs(60),
    )
    .await
    .expect("caught up");
    let tables = [
        ("catalog", "products"),
        ("stock", "levels"),
        ("stock", "movements"),
    ];
    let mut before = Vec::new();
    for (schema, table) in tables {
        before.push(table_dump(&app.db, schema, table).await.expect("dump"));
    }

    // Queries run all through both rebuilds.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let querying = {
        let (client, url, stop, answered) = (
            app.client.clone(),
            app.url("/api/integrations/inventory-levels?limit=5"),
            stop.clone(),
            answered.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let response = client.get(&url).send().await.expect("query");
                assert_eq!(response.status(), StatusCode::OK);
                let body: serde_json::Value = response.json().await.expect("json");
                assert_eq!(body["data"]["items"].as_array().map(Vec::len), Some(5));
                answered.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let config = test_config(&db);
    let report = karvon_app::rebuild_projection(&config, names::STOCK)
        .await
        .expect("rebuild stock");
    assert!(report.events >= 20_000, "{report:?}");
    karvon_app::rebuild_projection(&config, names::CATALOG)
        .await
        .expect("rebuild catalog");
    let during = answered.load(Ordering::Relaxed);

    for ((schema, table), expected) in tables.iter().zip(&before) {
        assert_eq!(
            &table_dump(&app.db, schema, table).await.expect("dump"),
            expected,
            "{schema}.{table} differs after rebuild"
        );
    }

    // Rebuild again while commands keep coming; the live runner continues
    // from the swapped-in position.
    let writing = {
        let app_client = app.client.clone();
        let url = app.url("/api/v1/stock/receipts");
        let transfers_url = app.url("/api/v1/stock/transfers");
        tokio::spawn(async move {
            for index in 0..200 {
                let body = json!({"warehouse_id": "LIVE", "product_id": format!("P{}", index % 20), "qty": "1"});
                let response = app_client
                    .post(&url)
                    .json(&body)
                    .send()
                    .await
                    .expect("write");
                assert_eq!(response.status(), StatusCode::CREATED);
                if index % 20 == 19 {
                    // The transfer reactor books the other side meanwhile.
                    let transfer = json!({"from_warehouse_id": "LIVE", "to_warehouse_id": "LIVE2",
                                          "product_id": format!("P{}", index % 20), "qty": "1"});
                    let response = app_client
                        .post(transfers_url.as_str())
                        .json(&transfer)
                        .send()
                        .await
                        .expect("transfer");
                    assert_eq!(response.status(), StatusCode::CREATED);
                }
            }
        })
    };
    karvon_app::rebuild_projection(&config, names::STOCK)
        .await
        .expect("rebuild under writes");
    writing.await.expect("writer");
    stop.store(true, Ordering::Relaxed);
    querying.await.expect("queries never failed");
    assert!(during > 0, "no query ran during the rebuild");

    wait_caught_up(
        &app.db,
        &[names::TRANSFERS, names::STOCK],
        Duration::from_secs(30),
    )
    .await
    .expect("caught up");
    let booked = fetch_strings(
        &app.db,
        "SELECT aggregate_id FROM events WHERE event_type = 'StockTransferredIn'",
    )
    .await
    .expect("transfer-ins");
    assert_eq!(booked.len(), 10, "each transfer booked once: {booked:?}");
    let (expected, events) = replayed_stock(&app.db).await.expect("replay");
    let (actual, movements) = projected_stock(&app.db).await.expect("projection");
    assert_eq!(movements, events);
    assert_eq!(actual, expected);
    let leftovers = fetch_strings(
        &app.db,
        match backend {
            Backend::Postgres => {
                "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE '%\\_\\_%'"
            }
            Backend::Sqlite => {
                "SELECT name FROM sqlite_master WHERE name LIKE '%\\_\\_rebuild%' ESCAPE '\\'"
            }
        },
    )
    .await
    .expect("leftovers");
    assert!(
        leftovers.is_empty(),
        "shadow tables left behind: {leftovers:?}"
    );
    app.stop().await.expect("stop");
}

async fn an_admin_can_rebuild_through_the_api_and_watch_it_swap(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    app.post("/api/v1/products", &product("P1", "general", Some("5")))
        .await;
    let (_, body) = app
        .post(
            "/api/v1/stock/receipts",
            &json!({"warehouse_id": "W1", "product_id": "P1", "qty": "3"}),
        )
        .await;
    app.get_after(
        "/api/integrations/inventory-levels",
        &body["data"]["position"],
    )
    .await;
    let before = table_dump(&app.db, "stock", "levels").await.expect("dump");

    let (status, body) = app
        .post("/api/v1/admin/projections/stock/rebuild", &json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let (status, _) = app
        .post("/api/v1/admin/projections/nonsense/rebuild", &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = app.get("/api/v1/admin/projections").await;
        let stock = body["data"]["items"]
            .as_array()
            .and_then(|items| items.iter().find(|item| item["name"] == "stock").cloned())
            .expect("stock listed");
        if stock["generation"] == 1 && stock["rebuilding"] == false {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild never swapped in: {stock}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        table_dump(&app.db, "stock", "levels").await.expect("dump"),
        before
    );
    app.stop().await.expect("stop");
}

on_both_backends!(
    rebuild_equals_the_live_model_and_queries_keep_answering,
    an_admin_can_rebuild_through_the_api_and_watch_it_swap,
);
