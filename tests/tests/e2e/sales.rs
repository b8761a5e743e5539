//! Sales: recorded as facts, refunded within what was sold, and stock that
//! follows both through the `sales_stock` reactor.

use std::sync::Arc;
use std::time::{Duration, Instant};

use karvon_adapters::read_models::stock::StockProjection;
use karvon_adapters::runner::{Consumer, Runner, RunnerSettings, session};
use karvon_adapters::sales_stock::SalesStock;
use karvon_adapters::store::CommandExecutor;
use karvon_domain::Id;
use karvon_domain::sale::{PaymentType, Sale, SaleCommand, SaleDetails, SaleLine, SaleType};
use karvon_tests::{
    Backend, Db, TestDb, fetch_strings, product, projected_stock, spawn_app, system_metadata,
    wait_caught_up,
};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tokio::sync::watch;

fn sale(id: &str, branch: &str, lines: Value) -> Value {
    json!({"sale_id": id, "branch_id": branch, "cashier": "dilnoza", "sale_type": "retail",
           "payment_type": "cash", "occurred_at": "2026-11-25T23:30:00+05:00", "lines": lines})
}

async fn levels(app: &karvon_tests::TestApp) -> Vec<(String, String, String)> {
    let (_, body) = app
        .get("/api/integrations/inventory-levels?limit=1000")
        .await;
    body["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["warehouse_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                item["product_id"].as_str().unwrap_or_default().to_string(),
                item["on_hand"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

async fn stock_follows_sales_and_refunds(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    for id in ["P1", "P2"] {
        app.post("/api/v1/products", &product(id, "dairy", None))
            .await;
    }
    for (product, qty) in [("P1", "10"), ("P2", "5")] {
        let receipt = json!({"warehouse_id": "B1", "product_id": product, "qty": qty});
        let (status, body) = app.post("/api/v1/stock/receipts", &receipt).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let first = sale(
        "S1",
        "B1",
        json!([{"product_id": "P1", "qty": "3", "unit_price": "1000"},
               {"product_id": "P2", "qty": 1, "unit_price": "500.50"},
               {"product_id": "P3", "qty": "2", "unit_price": "100"}]),
    );
    let (status, body) = app.post("/api/v1/sales", &first).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["id"], "S1");
    // The same sale again: the same answer, nothing new.
    let (status, again) = app.post("/api/v1/sales", &first).await;
    assert_eq!(
        (status, &again["data"]["id"]),
        (StatusCode::CREATED, &json!("S1"))
    );
    // The same id with other lines: refused.
    let other = sale(
        "S1",
        "B1",
        json!([{"product_id": "P1", "qty": "9", "unit_price": "1"}]),
    );
    let (status, body) = app.post("/api/v1/sales", &other).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::CONFLICT, &json!("already_exists"))
    );
    // Stock may go negative: a sale already happened.
    let (status, body) = app
        .post(
            "/api/v1/sales",
            &sale(
                "S2",
                "B2",
                json!([{"product_id": "P1", "qty": "4", "unit_price": "1000"}]),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let refund = json!({"occurred_at": "2026-11-26T10:00:00+05:00", "reason": "broken",
                        "lines": [{"product_id": "P1", "qty": "1"}]});
    let (status, body) = app.post("/api/v1/sales/S1/refund", &refund).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let too_much = json!({"occurred_at": "2026-11-26T10:00:00+05:00", "reason": "x",
                          "lines": [{"product_id": "P1", "qty": "3"}]});
    let (status, body) = app.post("/api/v1/sales/S1/refund", &too_much).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("refund_refused"))
    );
    let (status, _) = app.post("/api/v1/sales/NOPE/refund", &refund).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    wait_caught_up(&app.db, &["sales_stock", "stock"], Duration::from_secs(30))
        .await
        .expect("caught up");
    let mut found = levels(&app).await;
    found.sort();
    let expected: Vec<(String, String, String)> = [
        ("B1", "P1", "8"),
        ("B1", "P2", "4"),
        ("B1", "P3", "-2"),
        ("B2", "P1", "-4"),
    ]
    .iter()
    .map(|(w, p, q)| (w.to_string(), p.to_string(), q.to_string()))
    .collect();
    assert_eq!(found, expected);
    let (_, history) = app
        .get("/api/integrations/product-movement-history?product_id=P1&warehouse_id=B1")
        .await;
    let refs: Vec<&str> = history["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["ref"].as_str())
        .collect();
    assert!(refs.contains(&"sale:S1:1"), "{history}");
    let kinds: Vec<&str> = history["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["receipt", "sale", "refund"]);
    // The unknown product is on the sale.
    let flagged = fetch_strings(
        &app.db,
        match backend {
            Backend::Postgres => {
                "SELECT payload -> 'SaleRecorded' ->> 'unknown_products' FROM events
                  WHERE event_type = 'SaleRecorded' AND aggregate_id = 'default/S1'"
            }
            Backend::Sqlite => {
                "SELECT json_extract(payload, '$.SaleRecorded.unknown_products') FROM events
                  WHERE event_type = 'SaleRecorded' AND aggregate_id = 'default/S1'"
            }
        },
    )
    .await
    .expect("sale");
    assert_eq!(flagged, [r#"["P3"]"#]);
    app.stop().await.expect("stop");
}

async fn invalid_sales_are_refused_and_record_nothing(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let before = karvon_tests::event_count(&app.db).await.expect("count");
    let line = json!([{"product_id": "P1", "qty": "1", "unit_price": "1"}]);
    let mut no_offset = sale("S1", "B1", line.clone());
    no_offset["occurred_at"] = json!("2026-11-25T23:30:00");
    let mut bad_type = sale("S1", "B1", line.clone());
    bad_type["sale_type"] = json!("barter");
    let mut bad_payment = sale("S1", "B1", line.clone());
    bad_payment["payment_type"] = json!("gold");
    for body in [
        no_offset,
        bad_type,
        bad_payment,
        sale("S1", "B1", json!([])),
        sale(
            "S1",
            "B1",
            json!([{"product_id": "P1", "qty": "0", "unit_price": "1"}]),
        ),
        sale(
            "S1",
            "B1",
            json!([{"product_id": "P1", "qty": "1", "unit_price": "-1"}]),
        ),
        sale("S/1", "B1", line.clone()),
        sale(
            "S1",
            "B1",
            json!([{"product_id": "P1", "qty": "1000000000000000", "unit_price": "1000000000000000"}]),
        ),
    ] {
        let (status, response) = app.post("/api/v1/sales", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {response}");
    }
    assert_eq!(
        karvon_tests::event_count(&app.db).await.expect("count"),
        before
    );
    app.stop().await.expect("stop");
}

fn id(value: &str) -> Id {
    Id::parse(value).expect("id")
}

/// The reactor is killed after it deducted a batch of sales but before it
/// moved its checkpoint; a fresh one repeats the batch and deducts nothing
/// twice.
async fn a_reactor_crash_mid_batch_deducts_nothing_twice(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let sales = CommandExecutor::<Sale>::new(store.clone());
    for index in 0..30 {
        let sale_id = id(&format!("S{index}"));
        let details = SaleDetails {
            branch_id: id("B1"),
            cashier: "c".into(),
            customer_id: None,
            sale_type: SaleType::Retail,
            payment_type: PaymentType::Card,
            occurred_at: chrono::Utc::now(),
            lines: vec![SaleLine {
                product_id: id("P1"),
                qty: karvon_domain::Quantity::parse(Decimal::from(2)).expect("qty"),
                unit_price: karvon_domain::Money::parse(Decimal::from(10)).expect("price"),
            }],
        };
        sales
            .execute(
                &format!("default/{sale_id}"),
                SaleCommand::Record {
                    sale_id,
                    details,
                    unknown_products: Vec::new(),
                },
                &system_metadata(),
            )
            .await
            .expect("sale");
    }
    karvon_tests::wait_settled(&store).await;
    let reactor = Consumer::Reactor(Arc::new(SalesStock));
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
    while sold(&store).await < 30 {
        assert!(Instant::now() < deadline, "the reactor deducted nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    doomed.abort();
    let _ = doomed.await;

    let _reactor = tokio::spawn(
        Runner::new(store.clone(), reactor, RunnerSettings::default()).run(stop.clone()),
    );
    let _stock =
        tokio::spawn(Runner::new(store.clone(), stock, RunnerSettings::default()).run(stop));
    wait_caught_up(&store, &["sales_stock", "stock"], Duration::from_secs(60))
        .await
        .expect("caught up");
    assert_eq!(sold(&store).await, 30, "a sale line was deducted twice");
    let (levels, _) = projected_stock(&store).await.expect("projection");
    assert_eq!(
        levels
            .get(&("default".into(), "B1".into(), "P1".into()))
            .map(|(on_hand, _)| on_hand.as_str()),
        Some("-60")
    );
}

async fn sold(store: &Db) -> usize {
    fetch_strings(
        store,
        "SELECT CAST(sequence AS TEXT) FROM events WHERE event_type = 'StockSold'",
    )
    .await
    .expect("events")
    .len()
}

on_both_backends!(
    stock_follows_sales_and_refunds,
    invalid_sales_are_refused_and_record_nothing,
    a_reactor_crash_mid_batch_deducts_nothing_twice,
);
