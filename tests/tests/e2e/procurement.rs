//! Procurement: suppliers, purchase orders, goods receipts that raise stock
//! through the `receipts_stock` reactor, and supplier performance checked
//! against figures computed by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use karvon_adapters::read_models::stock::StockProjection;
use karvon_adapters::receipts_stock::ReceiptsStock;
use karvon_adapters::runner::{Consumer, Runner, RunnerSettings, session};
use karvon_adapters::store::CommandExecutor;
use karvon_domain::purchase_order::{
    OrderDetails, OrderLine, PurchaseOrder, PurchaseOrderCommand, ReceiptLine,
};
use karvon_domain::{Id, Money, Quantity};
use karvon_tests::{
    Backend, TestApp, TestDb, fetch_strings, projected_stock, spawn_app, system_metadata,
    wait_caught_up,
};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::sync::watch;

async fn created(app: &TestApp, path: &str, body: Value) -> Value {
    let (status, answer) = app.post(path, &body).await;
    assert!(status.is_success(), "{path}: {status} {answer}");
    answer["data"]["position"].clone()
}

fn order(po: &str, supplier: &str, ordered: &str, expected: &str, lines: Value) -> Value {
    json!({"po_id": po, "supplier_id": supplier, "ordered_at": ordered,
           "expected_at": expected, "lines": lines})
}

fn receipt(warehouse: &str, at: &str, lines: Value) -> Value {
    json!({"warehouse_id": warehouse, "received_at": at, "lines": lines})
}

/// The events of suppliers and purchase orders (the stock events the
/// reactor appends meanwhile are not the command's).
async fn procurement_events(app: &TestApp) -> usize {
    fetch_strings(
        &app.db,
        "SELECT CAST(sequence AS TEXT) FROM events WHERE aggregate_type IN ('Supplier', 'PurchaseOrder')",
    )
    .await
    .expect("events")
    .len()
}

/// Every refusal answers `status` with `code` in the envelope and appends
/// nothing.
async fn refused(app: &TestApp, path: &str, body: Value, status: StatusCode, code: &str) {
    let before = procurement_events(app).await;
    let (got, answer) = app.post(path, &body).await;
    assert_eq!(
        (got, answer["error"].as_str()),
        (status, Some(code)),
        "{path}: {answer}"
    );
    assert_eq!(answer["success"], json!(false));
    assert_eq!(procurement_events(app).await, before, "{path} appended");
}

fn performance_of<'a>(answer: &'a Value, supplier: &str) -> &'a Value {
    answer["data"]["items"]
        .as_array()
        .and_then(|items| items.iter().find(|item| item["supplier_id"] == supplier))
        .unwrap_or_else(|| panic!("no {supplier} in {answer}"))
}

/// The scenario of the issue: 3 suppliers, 6 POs (on time and late,
/// partial then complete, over-delivery, rejected goods, a different paid
/// price, a cancelled PO, a PO outside the range). Every metric is checked
/// against the value worked out by hand in the comments.
async fn supplier_performance_matches_hand_computed_figures(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    for (id, name) in [
        ("S1", "Toshkent Choy"),
        ("S2", "Samarqand Shakar"),
        ("S3", "Farg'ona Meva"),
    ] {
        created(
            &app,
            "/api/v1/suppliers",
            json!({"supplier_id": id, "name": name}),
        )
        .await;
    }
    // PO1 (S1): tea 100 @10 and sugar 50 @4, expected 5 March 18:00.
    created(
        &app,
        "/api/v1/purchase-orders",
        order(
            "PO1",
            "S1",
            "2026-03-01T09:00:00Z",
            "2026-03-05T18:00:00Z",
            json!([{"product_id": "TEA", "qty": "100", "unit_price": "10"},
                   {"product_id": "SUGAR", "qty": "50", "unit_price": "4"}]),
        ),
    )
    .await;
    // 3 March: 60 tea, and all 50 sugar of which 5 are rejected.
    created(
        &app,
        "/api/v1/purchase-orders/PO1/receipts",
        receipt(
            "WH1",
            "2026-03-03T09:00:00Z",
            json!([{"product_id": "TEA", "qty_received": "60", "batch": "T-1",
                    "expiry_date": "2027-03-01"},
                   {"product_id": "SUGAR", "qty_received": "50", "qty_rejected": "5"}]),
        ),
    )
    .await;
    // 7 March (late): the other 40 tea. Then the PO is closed.
    created(
        &app,
        "/api/v1/purchase-orders/PO1/receipts",
        receipt(
            "WH1",
            "2026-03-07T09:00:00Z",
            json!([{"product_id": "TEA", "qty_received": "40"}]),
        ),
    )
    .await;
    created(
        &app,
        "/api/v1/purchase-orders/PO1/close",
        json!({"reason": "sugar shortfall accepted"}),
    )
    .await;
    // PO2 (S1): tea 20 @10, received on time at a price of 11.
    created(
        &app,
        "/api/v1/purchase-orders",
        order(
            "PO2",
            "S1",
            "2026-03-10T00:00:00Z",
            "2026-03-15",
            json!([{"product_id": "TEA", "qty": "20", "unit_price": "10"}]),
        ),
    )
    .await;
    created(
        &app,
        "/api/v1/purchase-orders/PO2/receipts",
        receipt(
            "WH1",
            "2026-03-12T12:00:00Z",
            json!([{"product_id": "TEA", "qty_received": "20", "unit_price": "11"}]),
        ),
    )
    .await;
    // PO3 (S1): cancelled, so it counts nowhere.
    created(
        &app,
        "/api/v1/purchase-orders",
        order(
            "PO3",
            "S1",
            "2026-03-11T00:00:00Z",
            "2026-03-20T00:00:00Z",
            json!([{"product_id": "COFFEE", "qty": "5", "unit_price": "100"}]),
        ),
    )
    .await;
    created(&app, "/api/v1/purchase-orders/PO3/cancel", json!({})).await;
    // PO4 (S2): sugar 30 @4 and flour 10 @6, expected 4 March 08:00.
    created(
        &app,
        "/api/v1/purchase-orders",
        order(
            "PO4",
            "S2",
            "2026-03-02T08:00:00Z",
            "2026-03-04T08:00:00Z",
            json!([{"product_id": "SUGAR", "qty": "30", "unit_price": "4"},
                   {"product_id": "FLOUR", "qty": "10", "unit_price": "6"}]),
        ),
    )
    .await;
    let over = receipt(
        "WH2",
        "2026-03-04T08:00:00Z",
        json!([{"product_id": "SUGAR", "qty_received": "35"}]),
    );
    // 35 of 30 is refused until the tenant allows over-delivery...
    refused(
        &app,
        "/api/v1/purchase-orders/PO4/receipts",
        over.clone(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "over_delivery",
    )
    .await;
    karvon_adapters::auth_store::set_allow_over_delivery(&app.db, "default", true)
        .await
        .expect("setting");
    // ...then recorded, exactly at the expected time (on time). No flour.
    created(&app, "/api/v1/purchase-orders/PO4/receipts", over).await;
    // PO5 (S3): apples, nothing received, expected 25 March: overdue.
    created(
        &app,
        "/api/v1/purchase-orders",
        order(
            "PO5",
            "S3",
            "2026-03-20T00:00:00Z",
            "2026-03-25T00:00:00Z",
            json!([{"product_id": "APPLE", "qty": "10", "unit_price": "3"}]),
        ),
    )
    .await;
    // PO6 (S3): ordered in April, outside the range; all of it rejected.
    created(
        &app,
        "/api/v1/purchase-orders",
        order(
            "PO6",
            "S3",
            "2026-04-02T00:00:00Z",
            "2026-04-05T00:00:00Z",
            json!([{"product_id": "APPLE", "qty": "10", "unit_price": "3"}]),
        ),
    )
    .await;
    let last = created(
        &app,
        "/api/v1/purchase-orders/PO6/receipts",
        receipt(
            "WH1",
            "2026-04-03T00:00:00Z",
            json!([{"product_id": "APPLE", "qty_received": "10", "qty_rejected": "10"}]),
        ),
    )
    .await;

    let path = "/api/integrations/supplier-performance?date_from=2026-03-01&date_to=2026-03-31";
    let (status, answer) = app.get_after(path, &last).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["items"].as_array().map(Vec::len), Some(3));
    // S1 = PO1 + PO2 (PO3 cancelled). Lines: PO1 tea (late, in full),
    // PO1 sugar (on time, 45 of 50 accepted), PO2 tea (on time, in full).
    // on time 2/3; OTIF 1/3; fill (100 + 45 + 20) / 170; rejected 5 / 170
    // received; lead times 2 and 2.5 days: mean 2.25, population sd 0.25;
    // price variance (11 − 10) × 20 / (100×10 + 45×4 + 20×10) = 20 / 1380;
    // received value 100×10 + 45×4 + 20×11 = 1400; PO1 closed, PO2
    // complete: nothing overdue.
    assert_eq!(
        performance_of(&answer, "S1"),
        &json!({"supplier_id": "S1", "name": "Toshkent Choy", "orders": 2, "lines": 3,
                "on_time_rate": "0.6667", "fill_rate": "0.9706", "otif_rate": "0.3333",
                "avg_lead_time_days": "2.2500", "lead_time_stddev_days": "0.2500",
                "rejection_rate": "0.0294", "price_variance": "0.0145",
                "total_received_value": "1400", "overdue_open_orders": 0})
    );
    // S2 = PO4: sugar 35 of 30 on time and in full, flour nothing. Fill
    // min(35, 30) / 40; lead 2 days; open, flour missing, expected 4 March:
    // overdue as of 31 March.
    assert_eq!(
        performance_of(&answer, "S2"),
        &json!({"supplier_id": "S2", "name": "Samarqand Shakar", "orders": 1, "lines": 2,
                "on_time_rate": "0.5000", "fill_rate": "0.7500", "otif_rate": "0.5000",
                "avg_lead_time_days": "2.0000", "lead_time_stddev_days": "0.0000",
                "rejection_rate": "0.0000", "price_variance": "0.0000",
                "total_received_value": "140", "overdue_open_orders": 1})
    );
    // S3 = PO5 only (PO6 is April): nothing received, overdue.
    assert_eq!(
        performance_of(&answer, "S3"),
        &json!({"supplier_id": "S3", "name": "Farg'ona Meva", "orders": 1, "lines": 1,
                "on_time_rate": "0.0000", "fill_rate": "0.0000", "otif_rate": "0.0000",
                "avg_lead_time_days": null, "lead_time_stddev_days": null,
                "rejection_rate": null, "price_variance": null,
                "total_received_value": "0", "overdue_open_orders": 1})
    );
    // As of 10 March, PO5 was not yet ordered and PO4 already overdue.
    let (_, early) = app
        .get("/api/integrations/supplier-performance?date_from=2026-03-01&date_to=2026-03-10&supplier_id=S2")
        .await;
    assert_eq!(early["data"]["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(performance_of(&early, "S2")["overdue_open_orders"], 1);

    // Accepted goods are in stock, with the PO as the movement's ref.
    wait_caught_up(
        &app.db,
        &["receipts_stock", "stock"],
        Duration::from_secs(30),
    )
    .await
    .expect("stock caught up");
    let (levels, _) = projected_stock(&app.db).await.expect("levels");
    let on_hand = |warehouse: &str, product: &str| {
        levels
            .get(&("default".into(), warehouse.into(), product.into()))
            .map(|(on_hand, _)| on_hand.clone())
    };
    assert_eq!(on_hand("WH1", "TEA").as_deref(), Some("120"));
    assert_eq!(on_hand("WH1", "SUGAR").as_deref(), Some("45"));
    assert_eq!(on_hand("WH2", "SUGAR").as_deref(), Some("35"));
    assert_eq!(
        on_hand("WH1", "APPLE"),
        None,
        "rejected goods reached stock"
    );
    let (_, history) = app
        .get("/api/integrations/product-movement-history?product_id=TEA&warehouse_id=WH1")
        .await;
    let refs: Vec<&str> = history["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["ref"].as_str())
        .collect();
    assert_eq!(refs, ["po:PO1", "po:PO1", "po:PO2"], "{history}");

    // The PO as the API shows it.
    let (_, po) = app.get("/api/v1/purchase-orders/PO1").await;
    assert_eq!(po["data"]["status"], "closed");
    assert_eq!(po["data"]["lines"][1]["accepted"], "45");
    assert_eq!(
        po["data"]["lines"][0]["receipts"].as_array().map(Vec::len),
        Some(2)
    );
    let (_, open) = app.get("/api/v1/purchase-orders?status=open").await;
    let open: Vec<&str> = open["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["po_id"].as_str())
        .collect();
    assert_eq!(open, ["PO2", "PO4", "PO5", "PO6"]);

    // Rebuilding the read model gives the identical answer.
    let (status, _) = app
        .post("/api/v1/admin/projections/procurement/rebuild", &json!({}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = app.get("/api/v1/admin/projections").await;
        let generation = body["data"]["items"]
            .as_array()
            .and_then(|items| items.iter().find(|item| item["name"] == "procurement"))
            .map(|item| item["generation"].clone());
        if generation == Some(json!(1)) {
            break;
        }
        assert!(Instant::now() < deadline, "the rebuild never swapped in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, rebuilt) = app.get(path).await;
    assert_eq!(rebuilt, answer);
    app.stop().await.expect("stop");
}

/// Every refusal of the issue answers in the envelope and appends nothing.
async fn procurement_refusals_append_nothing(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    created(
        &app,
        "/api/v1/suppliers",
        json!({"supplier_id": "S1", "name": "Choy"}),
    )
    .await;
    let po = |id: &str, supplier: &str| {
        order(
            id,
            supplier,
            "2026-03-01T09:00:00+05:00",
            "2026-03-05",
            json!([{"product_id": "TEA", "qty": "10", "unit_price": "10"}]),
        )
    };
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let orders = "/api/v1/purchase-orders";
    refused(
        &app,
        orders,
        po("PO1", "NOPE"),
        unprocessable,
        "unknown_supplier",
    )
    .await;
    let mut bad = po("PO1", "S1");
    bad["lines"][0]["qty"] = json!("-1");
    refused(
        &app,
        orders,
        bad,
        StatusCode::BAD_REQUEST,
        "validation_error",
    )
    .await;
    let mut unknown_field = po("PO1", "S1");
    unknown_field["discount"] = json!("5");
    refused(
        &app,
        orders,
        unknown_field,
        StatusCode::BAD_REQUEST,
        "validation_error",
    )
    .await;
    let mut backwards = po("PO1", "S1");
    backwards["expected_at"] = json!("2026-02-01");
    refused(
        &app,
        orders,
        backwards,
        StatusCode::BAD_REQUEST,
        "validation_error",
    )
    .await;
    created(&app, orders, po("PO1", "S1")).await;
    created(&app, orders, po("PO2", "S1")).await;
    // The same PO again is a no-op; with other lines a conflict.
    let before = procurement_events(&app).await;
    let (status, _) = app.post(orders, &po("PO1", "S1")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(procurement_events(&app).await, before);
    let mut other = po("PO1", "S1");
    other["lines"][0]["qty"] = json!("11");
    refused(&app, orders, other, StatusCode::CONFLICT, "already_exists").await;

    let receipts = "/api/v1/purchase-orders/PO1/receipts";
    let line = |product: &str, received: &str, rejected: &str| {
        receipt(
            "WH1",
            "2026-03-02",
            json!([{"product_id": product, "qty_received": received, "qty_rejected": rejected}]),
        )
    };
    refused(
        &app,
        receipts,
        line("COFFEE", "1", "0"),
        unprocessable,
        "not_on_order",
    )
    .await;
    let bad_request = StatusCode::BAD_REQUEST;
    refused(
        &app,
        receipts,
        line("TEA", "-1", "0"),
        bad_request,
        "validation_error",
    )
    .await;
    refused(
        &app,
        receipts,
        line("TEA", "2", "-1"),
        bad_request,
        "validation_error",
    )
    .await;
    refused(
        &app,
        receipts,
        line("TEA", "2", "3"),
        bad_request,
        "validation_error",
    )
    .await;
    refused(
        &app,
        receipts,
        line("TEA", "11", "0"),
        unprocessable,
        "over_delivery",
    )
    .await;
    refused(
        &app,
        "/api/v1/purchase-orders/NOPE/receipts",
        line("TEA", "1", "0"),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    // A receipt id makes a retry safe; reused with other lines: conflict.
    let mut keyed = line("TEA", "4", "0");
    keyed["receipt_id"] = json!("R-1");
    created(&app, receipts, keyed.clone()).await;
    let before = procurement_events(&app).await;
    let (status, again) = app.post(receipts, &keyed).await;
    assert_eq!(
        (status, &again["data"]["id"]),
        (StatusCode::CREATED, &json!("R-1"))
    );
    assert_eq!(procurement_events(&app).await, before);
    keyed["lines"][0]["qty_received"] = json!("5");
    refused(
        &app,
        receipts,
        keyed,
        StatusCode::CONFLICT,
        "already_exists",
    )
    .await;

    // Cancel only before receipts; nothing on a closed or cancelled PO.
    refused(
        &app,
        "/api/v1/purchase-orders/PO1/cancel",
        json!({}),
        StatusCode::CONFLICT,
        "has_receipts",
    )
    .await;
    created(&app, "/api/v1/purchase-orders/PO1/close", json!({})).await;
    refused(
        &app,
        receipts,
        line("TEA", "1", "0"),
        StatusCode::CONFLICT,
        "order_closed",
    )
    .await;
    created(
        &app,
        "/api/v1/purchase-orders/PO2/cancel",
        json!({"reason": "late"}),
    )
    .await;
    refused(
        &app,
        "/api/v1/purchase-orders/PO2/receipts",
        line("TEA", "1", "0"),
        StatusCode::CONFLICT,
        "order_cancelled",
    )
    .await;
    refused(
        &app,
        "/api/v1/purchase-orders/PO2/close",
        json!({}),
        StatusCode::CONFLICT,
        "order_cancelled",
    )
    .await;
    app.stop().await.expect("stop");
}

fn id(value: &str) -> Id {
    Id::parse(value).expect("id")
}

/// The reactor is killed after it received a batch of goods into stock but
/// before it moved its checkpoint; a fresh one repeats the batch and
/// receives nothing twice.
async fn a_receipts_reactor_crash_receives_nothing_twice(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let orders = CommandExecutor::<PurchaseOrder>::new(store.clone());
    let qty = |value: i64| Quantity::parse(Decimal::from(value)).expect("qty");
    let money = |value: i64| Money::parse(Decimal::from(value)).expect("money");
    for index in 0..20 {
        let po_id = id(&format!("PO{index}"));
        let stream = format!("default/{po_id}");
        let details = OrderDetails {
            supplier_id: id("S1"),
            ordered_at: chrono::Utc::now(),
            expected_at: chrono::Utc::now() + chrono::Duration::days(3),
            lines: vec![
                OrderLine {
                    product_id: id("TEA"),
                    qty: qty(10),
                    unit_price: money(5),
                },
                OrderLine {
                    product_id: id("SUGAR"),
                    qty: qty(10),
                    unit_price: money(2),
                },
            ],
        };
        let place = PurchaseOrderCommand::Place { po_id, details };
        orders
            .execute(&stream, place, &system_metadata())
            .await
            .expect("place");
        let lines = ["TEA", "SUGAR"]
            .into_iter()
            .map(|product| ReceiptLine {
                product_id: id(product),
                qty_received: qty(10),
                qty_rejected: money(1),
                unit_price: None,
                batch: None,
                expiry_date: None,
            })
            .collect();
        let receive = PurchaseOrderCommand::Receive {
            receipt_id: format!("R{index}"),
            warehouse_id: id("WH1"),
            received_at: chrono::Utc::now(),
            lines,
            allow_over_delivery: false,
        };
        orders
            .execute(&stream, receive, &system_metadata())
            .await
            .expect("receive");
    }
    karvon_tests::wait_settled(&store).await;
    let reactor = Consumer::Reactor(Arc::new(ReceiptsStock));
    let stock = Consumer::Projection(Arc::new(StockProjection::default()));
    session::prepare_all(&store, &[reactor.clone(), stock.clone()])
        .await
        .expect("prepare");
    let (_stop_tx, stop) = watch::channel(false);
    let stalling = RunnerSettings {
        pause_before_checkpoint: Duration::from_secs(60),
        ..RunnerSettings::default()
    };
    let doomed =
        tokio::spawn(Runner::new(store.clone(), reactor.clone(), stalling).run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(90);
    while received(&store).await < 40 {
        assert!(Instant::now() < deadline, "the reactor received nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.abort();
    let _ = doomed.await;

    let _reactor = tokio::spawn(
        Runner::new(store.clone(), reactor, RunnerSettings::default()).run(stop.clone()),
    );
    let _stock =
        tokio::spawn(Runner::new(store.clone(), stock, RunnerSettings::default()).run(stop));
    wait_caught_up(
        &store,
        &["receipts_stock", "stock"],
        Duration::from_secs(60),
    )
    .await
    .expect("caught up");
    assert_eq!(
        received(&store).await,
        40,
        "a receipt line was received twice"
    );
    let (levels, _) = projected_stock(&store).await.expect("projection");
    for product in ["TEA", "SUGAR"] {
        assert_eq!(
            levels
                .get(&("default".into(), "WH1".into(), product.into()))
                .map(|(on_hand, _)| on_hand.as_str()),
            Some("180"),
            "{product}: 20 receipts of 9 accepted"
        );
    }
}

async fn received(store: &karvon_tests::Db) -> usize {
    fetch_strings(
        store,
        "SELECT CAST(sequence AS TEXT) FROM events WHERE event_type = 'StockReceived'",
    )
    .await
    .expect("events")
    .len()
}

on_both_backends!(
    supplier_performance_matches_hand_computed_figures,
    procurement_refusals_append_nothing,
    a_receipts_reactor_crash_receives_nothing_twice,
);
