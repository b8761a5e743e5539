//! Stock alerts as an operator sees them: `low_stock` opens once when
//! stock falls to the reorder level and clears when stock is received;
//! `expired` and `near_expiry` follow the batches on hand.

use std::time::{Duration, Instant};

use karvon_projections::names;
use karvon_tests::{Backend, TestApp, TestDb, product, spawn_app, wait_caught_up};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn alerts(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/v1/alerts{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"]["items"].as_array().expect("items").clone()
}

/// Waits until the alert rules and the alerts read model have seen every
/// event so far.
async fn settled(app: &TestApp) {
    // The rules' commands append alert events after the rules' own
    // checkpoint moves: wait for both consumers twice.
    for _ in 0..2 {
        wait_caught_up(
            &app.db,
            &[names::ALERT_RULES, names::ALERTS],
            Duration::from_secs(30),
        )
        .await
        .expect("caught up");
    }
}

async fn eventually_alerts(app: &TestApp, query: &str, wanted: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = alerts(app, query).await;
        if found.len() == wanted {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "wanted {wanted} alerts for {query}, found {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post_created(app: &TestApp, path: &str, body: Value) {
    let (status, answer) = app.post(path, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{path}: {answer}");
}

async fn issue(app: &TestApp, qty: &str) {
    post_created(
        app,
        "/api/v1/stock/issues",
        json!({"warehouse_id": "W1", "product_id": "P1", "qty": qty, "reason": "used"}),
    )
    .await;
}

async fn stock_at_the_reorder_level_raises_one_low_stock_alert_and_a_receipt_clears_it(
    backend: Backend,
) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    post_created(&app, "/api/v1/products", product("P1", "dairy", Some("5"))).await;
    post_created(
        &app,
        "/api/v1/stock/receipts",
        json!({"warehouse_id": "W1", "product_id": "P1", "qty": "10"}),
    )
    .await;
    issue(&app, "4").await;
    settled(&app).await;
    assert!(
        alerts(&app, "").await.is_empty(),
        "6 on hand is above the reorder level 5"
    );

    issue(&app, "1").await;
    let raised = eventually_alerts(&app, "?kind=low_stock&status=active", 1).await;
    let alert = &raised[0];
    assert_eq!(alert["subject"], "product:P1@W1", "{alert}");
    assert_eq!(alert["severity"], "warning");
    assert_eq!(alert["occurrences"], 1);
    assert!(
        alert["message"]
            .as_str()
            .is_some_and(|message| message.contains("on hand 5")),
        "{alert}"
    );

    // Falling further while it is open changes nothing.
    issue(&app, "2").await;
    settled(&app).await;
    let open = alerts(&app, "?status=active").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["occurrences"], 1, "{open:?}");

    // Receiving stock above the level resolves it.
    post_created(
        &app,
        "/api/v1/stock/receipts",
        json!({"warehouse_id": "W1", "product_id": "P1", "qty": "20"}),
    )
    .await;
    let resolved = eventually_alerts(&app, "?kind=low_stock&status=resolved", 1).await;
    assert!(resolved[0]["resolved_at"].is_string(), "{resolved:?}");
    assert!(alerts(&app, "?status=active").await.is_empty());

    // Falling again opens it again.
    issue(&app, "20").await;
    eventually_alerts(&app, "?kind=low_stock&status=active", 1).await;

    // Raising the reorder level is a cause too: a second warehouse at 8
    // is not low at 5, but is at 10.
    post_created(
        &app,
        "/api/v1/stock/receipts",
        json!({"warehouse_id": "W2", "product_id": "P1", "qty": "8"}),
    )
    .await;
    settled(&app).await;
    assert_eq!(alerts(&app, "?kind=low_stock&status=active").await.len(), 1);
    let (status, body) = app
        .put(
            "/api/v1/products/P1",
            &json!({"sku": "SKU-P1", "name": "Product P1", "category": "dairy",
                    "unit": "pcs", "reorder_level": "10"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let open = eventually_alerts(&app, "?kind=low_stock&status=active", 2).await;
    let mut subjects: Vec<&str> = open.iter().filter_map(|a| a["subject"].as_str()).collect();
    subjects.sort_unstable();
    assert_eq!(subjects, ["product:P1@W1", "product:P1@W2"]);
    app.stop().await.expect("stop");
}

async fn expired_and_expiring_batches_raise_alerts_that_clear_when_the_batch_is_gone(
    backend: Backend,
) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    post_created(&app, "/api/v1/products", product("P1", "dairy", None)).await;
    let today = chrono::Utc::now().date_naive();
    let receive = |batch: &str, qty: &str, expiry: chrono::NaiveDate| {
        json!({"warehouse_id": "W1", "product_id": "P1", "qty": qty, "batch": batch,
               "expiry_date": expiry.to_string()})
    };
    post_created(
        &app,
        "/api/v1/stock/receipts",
        receive("FRESH", "10", today + chrono::Duration::days(200)),
    )
    .await;
    settled(&app).await;
    assert!(alerts(&app, "").await.is_empty(), "nothing expires soon");

    post_created(
        &app,
        "/api/v1/stock/receipts",
        receive("OLD", "2", today - chrono::Duration::days(3)),
    )
    .await;
    post_created(
        &app,
        "/api/v1/stock/receipts",
        receive("SOON", "3", today + chrono::Duration::days(10)),
    )
    .await;
    let expired = eventually_alerts(&app, "?kind=expired&status=active", 1).await;
    assert_eq!(expired[0]["severity"], "critical");
    assert!(
        expired[0]["message"]
            .as_str()
            .is_some_and(|message| message.contains("OLD") && !message.contains("SOON")),
        "{expired:?}"
    );
    let near = eventually_alerts(&app, "?kind=near_expiry&status=active", 1).await;
    assert!(
        near[0]["message"]
            .as_str()
            .is_some_and(|message| message.contains("SOON")),
        "{near:?}"
    );

    // Issues take the earliest expiry first: 2 clear the expired batch,
    // 3 more the expiring one.
    issue(&app, "2").await;
    eventually_alerts(&app, "?kind=expired&status=resolved", 1).await;
    assert_eq!(
        alerts(&app, "?kind=near_expiry&status=active").await.len(),
        1
    );
    issue(&app, "3").await;
    eventually_alerts(&app, "?kind=near_expiry&status=resolved", 1).await;
    assert!(alerts(&app, "?status=active").await.is_empty());
    app.stop().await.expect("stop");
}

on_both_backends!(
    stock_at_the_reorder_level_raises_one_low_stock_alert_and_a_receipt_clears_it,
    expired_and_expiring_batches_raise_alerts_that_clear_when_the_batch_is_gone,
);
