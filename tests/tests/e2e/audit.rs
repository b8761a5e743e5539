//! The audit trail: a stream's events with metadata, the tenant's feed
//! paged, both confined to the caller's tenant and to scope `admin`.

use karvon_tests::{Backend, TestDb, authorized_client, product, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn the_audit_trail_shows_a_tenants_events_and_nothing_else(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let (status, _) = app
        .post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut changed = product("P1", "dairy", Some("3"));
    changed
        .as_object_mut()
        .expect("object")
        .remove("product_id");
    let (status, body) = app
        .send(
            app.client
                .put(app.url("/api/v1/products/P1"))
                .json(&changed),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "4"});
    let (status, _) = app
        .send(
            app.client
                .post(app.url("/api/v1/stock/receipts"))
                .header("Idempotency-Key", "audit-1")
                .header("X-Request-Id", "req-audit-1")
                .json(&receipt),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, body) = app.get("/api/v1/audit/streams/Product/P1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let types: Vec<&str> = body["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["event_type"].as_str())
        .collect();
    assert_eq!(types, ["ProductRegistered", "ProductUpdated"]);
    assert_eq!(body["data"]["items"][1]["sequence"], 2);
    assert_eq!(body["data"]["items"][0]["aggregate_id"], "P1");
    assert!(
        body["data"]["items"][0]["metadata"]["actor"]
            .as_str()
            .is_some_and(|actor| actor.starts_with("key:")),
        "{body}"
    );
    let (status, stock) = app.get("/api/v1/audit/streams/StockItem/W1%2FP1").await;
    assert_eq!(status, StatusCode::OK, "{stock}");
    let item = &stock["data"]["items"][0];
    assert_eq!(item["aggregate_id"], "W1/P1");
    assert_eq!(item["data"]["StockReceived"]["qty"], "4", "{item}");
    assert_eq!(item["metadata"]["idempotency_key"], "audit-1");
    assert_eq!(item["metadata"]["correlation_id"], "req-audit-1");
    let (status, _) = app.get("/api/v1/audit/streams/Product/NOPE").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The feed, two at a time, gives every event of the tenant once, in order.
    let mut after: Option<String> = None;
    let mut seen: Vec<Value> = Vec::new();
    loop {
        let path = match &after {
            Some(after) => format!("/api/v1/audit/events?limit=2&after={after}"),
            None => "/api/v1/audit/events?limit=2".to_string(),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        seen.extend(
            page["data"]["items"]
                .as_array()
                .expect("items")
                .iter()
                .cloned(),
        );
        match page["data"]["next_cursor"].as_str() {
            Some(cursor) => after = Some(cursor.to_string()),
            None => break,
        }
    }
    let ids: Vec<&str> = seen
        .iter()
        .filter_map(|item| item["event_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "{seen:?}");
    let count = karvon_tests::event_count(&app.db).await.expect("count");
    assert_eq!(count, 3);

    // Another tenant's admin sees none of it; a read key is refused.
    karvon_adapters::auth_store::create_tenant(&app.db, "other", "UTC")
        .await
        .expect("tenant");
    let other = karvon_tests::admin_key(&app.db, "other")
        .await
        .expect("key");
    let other = authorized_client(&other).expect("client");
    let (status, _) = app
        .send(other.get(app.url("/api/v1/audit/streams/Product/P1")))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, feed) = app.send(other.get(app.url("/api/v1/audit/events"))).await;
    assert_eq!(feed["data"]["items"], json!([]));
    let reader =
        karvon_app::auth::create_api_key(&app.db, "default", vec!["read".into()], None, None, None)
            .await
            .expect("key")
            .key;
    let reader = authorized_client(&reader).expect("client");
    let (status, _) = app.send(reader.get(app.url("/api/v1/audit/events"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.stop().await.expect("stop");
}

on_both_backends!(the_audit_trail_shows_a_tenants_events_and_nothing_else);
