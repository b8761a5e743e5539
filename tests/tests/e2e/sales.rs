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

/// The fields of a totals row as numbers, in a fixed order: total, retail,
/// wholesale, refunds, net, count, items.
fn totals(row: &Value) -> [Decimal; 7] {
    let number = |field: &str| -> Decimal {
        match &row[field] {
            Value::String(text) => text.parse().expect("decimal"),
            Value::Number(number) => number.to_string().parse().expect("number"),
            other => panic!("{field}: {other}"),
        }
    };
    [
        number("total_amount"),
        number("retail_amount"),
        number("wholesale_amount"),
        number("refunds_amount"),
        number("net_amount"),
        number("sales_count"),
        number("items_sold"),
    ]
}

fn d(values: [&str; 7]) -> [Decimal; 7] {
    values.map(|value| value.parse().expect("decimal"))
}

async fn sales_buckets_follow_the_tenants_calendar(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    karvon_adapters::auth_store::create_tenant(&app.db, "tash", "Asia/Tashkent")
        .await
        .expect("tenant");
    let token = karvon_app::auth::create_api_key(
        &app.db,
        "tash",
        vec!["admin".into(), "operator".into()],
        Some(100_000),
        None,
        None,
    )
    .await
    .expect("key")
    .key;
    let client = karvon_tests::authorized_client(&token).expect("client");
    let post = |path: &str, body: Value| {
        let request = client.post(app.url(path)).json(&body);
        async move {
            let response = request.send().await.expect("sent");
            let status = response.status();
            let body: Value = response.json().await.expect("json");
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body["data"]["position"]
                .as_str()
                .expect("position")
                .to_string()
        }
    };
    let with = |id: &str, branch: &str, cashier: &str, kind: &str, at: &str, lines: Value| {
        json!({"sale_id": id, "branch_id": branch, "cashier": cashier, "sale_type": kind,
               "payment_type": "card", "occurred_at": at, "lines": lines})
    };
    // Sunday 23:30 and Monday 00:30 in Tashkent are both Sunday in UTC.
    post(
        "/api/v1/sales",
        with(
            "S1",
            "B1",
            "ali",
            "retail",
            "2026-11-29T23:30:00+05:00",
            json!([{"product_id": "P1", "qty": "2", "unit_price": "1000"},
               {"product_id": "P2", "qty": "1", "unit_price": "500.50"}]),
        ),
    )
    .await;
    post(
        "/api/v1/sales",
        with(
            "S2",
            "B1",
            "vali",
            "wholesale",
            "2026-11-30T00:30:00+05:00",
            json!([{"product_id": "P1", "qty": "10", "unit_price": "900"}]),
        ),
    )
    .await;
    post(
        "/api/v1/sales",
        with(
            "S3",
            "B2",
            "ali",
            "retail",
            "2026-12-01T10:00:00+05:00",
            json!([{"product_id": "P2", "qty": "4", "unit_price": "250"}]),
        ),
    )
    .await;
    let last = post(
        "/api/v1/sales/S1/refund",
        json!({"occurred_at": "2026-12-01T00:10:00+05:00",
        "reason": "broken", "lines": [{"product_id": "P1", "qty": "1"}]}),
    )
    .await;

    let query = |period: &str, extra: &str| {
        let request = client
            .get(app.url(&format!(
                "/api/integrations/real-time-sales?period={period}&date_from=2026-11-29&date_to=2026-12-01{extra}"
            )))
            .header("X-Min-Position", last.clone());
        async move {
            let response = request.send().await.expect("sent");
            assert_eq!(response.status(), StatusCode::OK);
            let body: Value = response.json().await.expect("json");
            body["data"].clone()
        }
    };
    let buckets = |data: &Value| -> Vec<(String, [Decimal; 7])> {
        data["buckets"]
            .as_array()
            .expect("buckets")
            .iter()
            .map(|row| {
                (
                    row["period_start"].as_str().unwrap_or_default().to_string(),
                    totals(row),
                )
            })
            .collect()
    };
    let daily = query("daily", "").await;
    assert_eq!(
        buckets(&daily),
        vec![
            (
                "2026-11-29".to_string(),
                d(["2500.50", "2500.50", "0", "0", "2500.50", "1", "3"])
            ),
            (
                "2026-11-30".to_string(),
                d(["9000", "0", "9000", "0", "9000", "1", "10"])
            ),
            (
                "2026-12-01".to_string(),
                d(["1000", "1000", "0", "1000", "0", "1", "4"])
            ),
        ]
    );
    let weekly = query("weekly", "").await;
    assert_eq!(
        buckets(&weekly),
        vec![
            (
                "2026-11-23".to_string(),
                d(["2500.50", "2500.50", "0", "0", "2500.50", "1", "3"])
            ),
            (
                "2026-11-30".to_string(),
                d(["10000", "1000", "9000", "1000", "9000", "2", "14"])
            ),
        ]
    );
    let monthly = query("monthly", "").await;
    assert_eq!(
        buckets(&monthly),
        vec![
            (
                "2026-11-01".to_string(),
                d(["11500.50", "2500.50", "9000", "0", "11500.50", "2", "13"])
            ),
            (
                "2026-12-01".to_string(),
                d(["1000", "1000", "0", "1000", "0", "1", "4"])
            ),
        ]
    );
    let yearly = query("yearly", "").await;
    assert_eq!(
        buckets(&yearly),
        vec![(
            "2026-01-01".to_string(),
            d(["12500.50", "3500.50", "9000", "1000", "11500.50", "3", "17"])
        )]
    );
    let named = |data: &Value, list: &str, key: &str| -> Vec<(String, [Decimal; 7])> {
        data[list]
            .as_array()
            .expect("list")
            .iter()
            .map(|row| {
                (
                    row[key].as_str().unwrap_or_default().to_string(),
                    totals(row),
                )
            })
            .collect()
    };
    assert_eq!(
        named(&daily, "by_branch", "branch_id"),
        vec![
            (
                "B1".to_string(),
                d(["11500.50", "2500.50", "9000", "1000", "10500.50", "2", "13"])
            ),
            (
                "B2".to_string(),
                d(["1000", "1000", "0", "0", "1000", "1", "4"])
            ),
        ]
    );
    assert_eq!(
        named(&daily, "by_cashier", "cashier"),
        vec![
            (
                "ali".to_string(),
                d(["3500.50", "3500.50", "0", "1000", "2500.50", "2", "7"])
            ),
            (
                "vali".to_string(),
                d(["9000", "0", "9000", "0", "9000", "1", "10"])
            ),
        ]
    );
    let branch = query("daily", "&branch_id=B2").await;
    assert_eq!(
        buckets(&branch),
        vec![(
            "2026-12-01".to_string(),
            d(["1000", "1000", "0", "0", "1000", "1", "4"])
        )]
    );
    // The default tenant sees none of it.
    let (_, other) = app
        .get("/api/integrations/real-time-sales?period=yearly&date_from=2026-01-01&date_to=2026-12-31")
        .await;
    assert_eq!(other["data"]["buckets"], json!([]), "{other}");

    // A rebuild of the read model answers the same.
    let rebuilt = client
        .post(app.url("/api/v1/admin/projections/sales/rebuild"))
        .json(&json!({}))
        .send()
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.status(), StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = app.get("/api/v1/admin/projections").await;
        let generation = body["data"]["items"]
            .as_array()
            .and_then(|items| items.iter().find(|item| item["name"] == "sales"))
            .map(|item| item["generation"].clone());
        if generation == Some(json!(1)) {
            break;
        }
        assert!(Instant::now() < deadline, "the rebuild never swapped in");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(query("daily", "").await, daily);
    assert_eq!(query("weekly", "").await, weekly);
    app.stop().await.expect("stop");
}

on_both_backends!(sales_buckets_follow_the_tenants_calendar);

async fn recommendations_rank_top_sellers_and_products_bought_together(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let (_, registered) = app
        .post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    // Names come from the catalogue: let it have the product first.
    let (status, _) = app
        .get_after("/api/v1/products/P1", &registered["data"]["position"])
        .await;
    assert_eq!(status, StatusCode::OK);
    let now = chrono::Utc::now().to_rfc3339();
    let line =
        |product: &str, qty: &str| json!({"product_id": product, "qty": qty, "unit_price": "10"});
    let mut last = Value::Null;
    for (id, lines) in [
        ("S1", json!([line("P1", "2"), line("P2", "1")])),
        ("S2", json!([line("P1", "1"), line("P3", "3")])),
        ("S3", json!([line("P2", "1")])),
        ("S4", json!([line("P1", "1"), line("P2", "2")])),
    ] {
        let mut body = sale(id, "B1", lines);
        body["occurred_at"] = json!(now);
        let (status, response) = app.post("/api/v1/sales", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{response}");
        last = response["data"]["position"].clone();
    }
    let (status, top) = app
        .get_after(
            "/api/integrations/product-recommendations?period=all",
            &last,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{top}");
    let ranked: Vec<(String, String, i64, Value)> = top["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["product_id"].as_str().unwrap_or_default().to_string(),
                item["qty_sold"].as_str().unwrap_or_default().to_string(),
                item["sales_count"].as_i64().unwrap_or_default(),
                item["name"].clone(),
            )
        })
        .collect();
    assert_eq!(
        ranked,
        vec![
            ("P1".to_string(), "4".to_string(), 3, json!("Product P1")),
            ("P2".to_string(), "4".to_string(), 3, Value::Null),
            ("P3".to_string(), "3".to_string(), 1, Value::Null),
        ]
    );
    let (status, together) = app
        .get("/api/integrations/product-recommendations?period=monthly&product_id=P1")
        .await;
    assert_eq!(status, StatusCode::OK, "{together}");
    let pairs: Vec<(String, i64, String, String)> = together["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["product_id"].as_str().unwrap_or_default().to_string(),
                item["together"].as_i64().unwrap_or_default(),
                item["support"].as_str().unwrap_or_default().to_string(),
                item["confidence"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        vec![
            (
                "P2".to_string(),
                2,
                "0.5000".to_string(),
                "0.6667".to_string()
            ),
            (
                "P3".to_string(),
                1,
                "0.2500".to_string(),
                "0.3333".to_string()
            ),
        ]
    );
    let (status, _) = app
        .get("/api/integrations/product-recommendations?period=decade")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    app.stop().await.expect("stop");
}

on_both_backends!(recommendations_rank_top_sellers_and_products_bought_together);
