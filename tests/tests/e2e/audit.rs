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

    // The feed, two at a time, gives every event of the tenant once, in
    // order (once settled: PostgreSQL shows no event while an older
    // transaction anywhere in the cluster may still commit before it).
    karvon_tests::wait_settled(&app.db).await;
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

async fn events_export_and_verify(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    for id in ["P1", "P2"] {
        let (status, _) = app
            .post_keyed(
                "/api/v1/products",
                &format!("key-{id}"),
                &product(id, "dairy", None),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "4"});
    app.post("/api/v1/stock/receipts", &receipt).await;
    let config = karvon_tests::test_config(&db);
    let report = karvon_app::verify_events(&config).await.expect("verify");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!((report.events, report.streams), (3, 3));

    karvon_tests::wait_settled(&app.db).await;
    let mut lines: Vec<Value> = Vec::new();
    let written = karvon_adapters::audit::export(&app.db, "default", None, None, |event| {
        lines.push(karvon_adapters::relay::cloud_event(event));
        Ok(())
    })
    .await
    .expect("export");
    assert_eq!(written, 3);
    let types: Vec<&str> = lines
        .iter()
        .filter_map(|line| line["type"].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "karvon.Product.ProductRegistered",
            "karvon.Product.ProductRegistered",
            "karvon.StockItem.StockReceived"
        ]
    );
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let none = karvon_adapters::audit::export(&app.db, "default", Some(later), None, |_| Ok(()))
        .await
        .expect("export");
    let other = karvon_adapters::audit::export(&app.db, "other", None, None, |_| Ok(()))
        .await
        .expect("export");
    assert_eq!((none, other), (0, 0));

    // A stream that starts at 2 and an event without an actor are found.
    karvon_tests::execute(
        &app.db,
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('Product', 'default/GAP', 2, 'ProductRegistered', '1', '{}',
                 '{\"tenant_id\": \"default\", \"source\": \"system\", \"correlation_id\": \"x\"}')",
    )
    .await
    .expect("broken event");
    let report = karvon_app::verify_events(&config).await.expect("verify");
    assert!(!report.is_clean());
    assert_eq!(
        report.streams_with_holes,
        [("Product".to_string(), "default/GAP".to_string(), 1, 2)]
    );
    assert_eq!(report.events_without_metadata.len(), 1);
    assert_eq!(report.unlogged_keys, 0);

    // A row deleted by hand from a clean stream is a hole too.
    karvon_tests::execute(
        &app.db,
        "DELETE FROM events WHERE aggregate_type = 'Product' AND aggregate_id = 'default/P1'",
    )
    .await
    .expect("delete");
    karvon_tests::execute(
        &app.db,
        "DELETE FROM events WHERE aggregate_type = 'Product' AND aggregate_id = 'default/GAP'",
    )
    .await
    .expect("delete");
    let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "1"});
    app.post("/api/v1/stock/receipts", &receipt).await;
    karvon_tests::execute(
        &app.db,
        "DELETE FROM events WHERE aggregate_type = 'StockItem' AND sequence = 1",
    )
    .await
    .expect("delete");
    let report = karvon_app::verify_events(&config).await.expect("verify");
    assert_eq!(
        report.streams_with_holes,
        [("StockItem".to_string(), "default/W1/P1".to_string(), 1, 2)]
    );
    app.stop().await.expect("stop");
}

/// `inventory-levels?as_of=` answers from the events recorded up to then.
async fn inventory_levels_as_they_stood_then(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    app.post("/api/v1/products", &product("P1", "dairy", Some("5")))
        .await;
    let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "10",
                         "batch": "B1", "expiry_date": "2027-01-31"});
    let (status, body) = app.post("/api/v1/stock/receipts", &receipt).await;
    assert_eq!(status, StatusCode::CREATED);
    // The live answer at that moment, to compare with `as_of` later.
    let (_, live) = app
        .get_after(
            "/api/integrations/inventory-levels",
            &body["data"]["position"],
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let issue = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "7", "reason": "damaged"});
    let (status, body) = app.post("/api/v1/stock/issues", &issue).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, now) = app
        .get_after(
            "/api/integrations/inventory-levels",
            &body["data"]["position"],
        )
        .await;
    assert_eq!(now["data"]["items"][0]["on_hand"], "3");
    assert_eq!(now["data"]["items"][0]["low_stock"], true);
    karvon_tests::wait_settled(&app.db).await;

    let at = |instant: chrono::DateTime<chrono::Utc>, filter: &str| {
        format!(
            "/api/integrations/inventory-levels?as_of={}{filter}",
            instant.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
    };
    let (status, then) = app.get(&at(between, "")).await;
    assert_eq!(status, StatusCode::OK, "{then}");
    assert_eq!(
        then["data"], live["data"],
        "as_of differs from the live answer then"
    );
    let item = &then["data"]["items"][0];
    assert_eq!(item["on_hand"], "10", "{then}");
    assert_eq!(item["low_stock"], false);
    assert_eq!(item["sku"], "SKU-P1");
    assert_eq!(item["batches"][0]["batch"], "B1");
    let (_, low) = app.get(&at(between, "&low_stock=true")).await;
    assert_eq!(low["data"]["items"], json!([]));
    let (_, before) = app
        .get(&at(chrono::Utc::now() - chrono::Duration::days(1), ""))
        .await;
    assert_eq!(before["data"]["items"], json!([]));
    let (_, today) = app.get(&at(chrono::Utc::now(), "")).await;
    assert_eq!(today["data"]["items"][0]["on_hand"], "3");
    let (status, _) = app
        .get("/api/integrations/inventory-levels?as_of=yesterday")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await.expect("stop");
}

/// `real-time-sales?as_of=` answers from the sale events recorded up to
/// then: a refund recorded later is not in it.
async fn sales_as_they_stood_then(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let sale = json!({"sale_id": "S1", "branch_id": "B1", "cashier": "c", "sale_type": "retail",
        "payment_type": "cash", "occurred_at": "2026-03-10T10:00:00Z",
        "lines": [{"product_id": "P1", "qty": "2", "unit_price": "100"}]});
    let (status, recorded) = app.post("/api/v1/sales", &sale).await;
    assert_eq!(status, StatusCode::CREATED);
    let path =
        "/api/integrations/real-time-sales?period=monthly&date_from=2026-03-01&date_to=2026-03-31";
    let (_, live) = app.get_after(path, &recorded["data"]["position"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let refund = json!({"occurred_at": "2026-03-10T12:00:00Z", "reason": "broken"});
    let (status, body) = app.post("/api/v1/sales/S1/refund", &refund).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let path =
        "/api/integrations/real-time-sales?period=monthly&date_from=2026-03-01&date_to=2026-03-31";
    let (_, now) = app.get_after(path, &body["data"]["position"]).await;
    assert_eq!(now["data"]["buckets"][0]["net_amount"], "0", "{now}");
    karvon_tests::wait_settled(&app.db).await;
    let then = |instant: chrono::DateTime<chrono::Utc>| {
        format!(
            "{path}&as_of={}",
            instant.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )
    };
    let (status, past) = app.get(&then(between)).await;
    assert_eq!(status, StatusCode::OK, "{past}");
    let bucket = &past["data"]["buckets"][0];
    assert_eq!(
        (
            &bucket["total_amount"],
            &bucket["refunds_amount"],
            &bucket["net_amount"]
        ),
        (&json!("200"), &json!("0"), &json!("200")),
        "{past}"
    );
    assert_eq!(past["data"]["by_cashier"][0]["sales_count"], 1);
    assert_eq!(
        past["data"], live["data"],
        "as_of differs from the live answer then"
    );
    let (_, today) = app.get(&then(chrono::Utc::now())).await;
    assert_eq!(today["data"], now["data"]);
    app.stop().await.expect("stop");
}

on_both_backends!(
    sales_as_they_stood_then,
    inventory_levels_as_they_stood_then,
    the_audit_trail_shows_a_tenants_events_and_nothing_else,
    events_export_and_verify,
);
