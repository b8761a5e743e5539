//! REGOS sales sync end to end: a fake REGOS gateway speaking the
//! documented format (`fixtures/regos/`: the `{ok, result, next_offset,
//! total}` envelope, a capped `limit`, an 8213 throttle every few calls,
//! errors with HTTP 200), the real application syncing from it with its
//! own rate limit on, totals checked against numbers computed here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::post;
use chrono::{NaiveDate, TimeZone};
use karvon_projections::names;
use karvon_tests::{
    Backend, KarvonProcess, TestApp, TestDb, execute, fetch_strings, finished_job as finished,
    spawn_app_with, test_config,
};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Value, json};

const KEY: &str = "11v5929ba236415hb31346ede021bdi4";
const CONNECTED: &str = "conn-7f3a";
const ZONE: chrono_tz::Tz = chrono_tz::Asia::Tashkent;
/// The gateway answers at most this many rows per page.
const CAP: usize = 7;

#[derive(Clone, Debug)]
struct Line {
    item: i64,
    barcode: String,
    stock: i64,
    qty: &'static str,
    price: &'static str,
    storno: bool,
}

#[derive(Clone, Debug)]
struct Cheque {
    uuid: String,
    date: i64,
    status: &'static str,
    is_return: bool,
    cashier: &'static str,
    lines: Vec<Line>,
}

struct Gateway {
    cheques: Vec<Cheque>,
    calls: usize,
    /// Every n-th call answers 8213.
    throttle_every: usize,
    /// `DocCheque/Get` answers `ok: false` (1008).
    refuse: bool,
    /// Each lines call takes this long.
    delay: Duration,
    /// What `Sale/Get` answers (flattened sale rows).
    sale_rows: Vec<Value>,
}

type Shared = Arc<Mutex<Gateway>>;

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, d).expect("date")
}

/// `n` cheques over 2026-01-01..03 (Tashkent), two stocks, two cashiers,
/// every fifth a return, every seventh still open, one storno line.
fn cheques(n: usize) -> Vec<Cheque> {
    (0..n)
        .map(|i| {
            let local = day(1 + (i % 3) as u32)
                .and_hms_opt(8 + (i % 12) as u32, (i * 7 % 60) as u32, 0)
                .expect("time");
            let date = ZONE
                .from_local_datetime(&local)
                .single()
                .expect("local")
                .timestamp();
            let mut lines = vec![
                Line {
                    item: 101,
                    barcode: "4780000000017".into(),
                    stock: 1 + (i % 2) as i64,
                    qty: "3",
                    price: "18500",
                    storno: false,
                },
                Line {
                    item: 102,
                    barcode: "0478000000024".into(),
                    stock: 1 + (i % 2) as i64,
                    qty: "6.5",
                    price: "13846.15",
                    storno: false,
                },
                Line {
                    item: 900 + i as i64,
                    barcode: String::new(),
                    stock: 1 + (i % 2) as i64,
                    qty: "1",
                    price: "1000.50",
                    storno: i == 4,
                },
            ];
            if i % 5 == 3 {
                lines.truncate(1);
            }
            Cheque {
                uuid: format!("3f2b9c1e-5a7d-4e21-9b0a-{i:012}"),
                date,
                status: if i % 7 == 6 { "Open" } else { "Closed" },
                is_return: i % 5 == 3,
                cashier: if i % 3 == 0 { "Dilnoza K." } else { "Aziz T." },
                lines,
            }
        })
        .collect()
}

fn cheque_json(cheque: &Cheque) -> Value {
    json!({"uuid": cheque.uuid, "date": cheque.date, "code": "A-1", "status": cheque.status,
           "session": "s", "cashier": {"id": 12, "full_name": cheque.cashier},
           "is_return": cheque.is_return, "seller": null, "return_reason": null, "card": null,
           "amount": 0, "agregate_status": null, "last_update": cheque.date})
}

fn line_json(cheque: &Cheque, n: usize, line: &Line) -> Value {
    let number = |text: &str| -> Value { serde_json::from_str(text).expect("number") };
    json!({"uuid": format!("{}-{n}", cheque.uuid), "document": cheque.uuid, "order": n + 1,
           "item": {"id": line.item, "name": "x", "articul": "a", "base_barcode": line.barcode},
           "stock_id": line.stock, "quantity": number(line.qty), "price": number(line.price),
           "price2": number(line.price), "vat_value": 12, "has_storno": line.storno,
           "storno_uuid": null, "promo_id": null, "last_update": cheque.date})
}

/// Pages `rows` by the request's `limit` (capped) and `offset`.
fn page(rows: Vec<Value>, body: &Value) -> Value {
    let limit = body["limit"].as_u64().unwrap_or(CAP as u64).min(CAP as u64) as usize;
    let offset = body["offset"].as_u64().unwrap_or(0) as usize;
    let total = rows.len();
    let result: Vec<Value> = rows.into_iter().skip(offset).take(limit).collect();
    json!({"ok": true, "result": result, "next_offset": offset + result.len(), "total": total})
}

async fn gateway(
    State(shared): State<Shared>,
    Path((key, entity, verb)): Path<(String, String, String)>,
    axum::Json(body): axum::Json<Value>,
) -> axum::Json<Value> {
    let (cheques, throttled, refuse, delay, sale_rows) = {
        let mut gateway = shared.lock().expect("gateway");
        gateway.calls += 1;
        (
            gateway.cheques.clone(),
            gateway.calls % gateway.throttle_every == 0,
            gateway.refuse,
            gateway.delay,
            gateway.sale_rows.clone(),
        )
    };
    if key != KEY {
        return axum::Json(
            json!({"ok": false, "result": {"error": 9006, "description": "Access denied"}}),
        );
    }
    if throttled {
        return axum::Json(
            json!({"ok": false, "result": {"error": 8213, "description": "Request limit exceeded"}}),
        );
    }
    match (entity.to_lowercase().as_str(), verb.to_lowercase().as_str()) {
        ("doccheque", "get") => {
            if refuse {
                return axum::Json(json!({"ok": false, "result": {"error": 1008,
                    "description": "Input validation error: parameters are invalid. Details: end_date"}}));
            }
            let mut rows: Vec<&Cheque> = match body["uuids"].as_array() {
                Some(uuids) => cheques
                    .iter()
                    .filter(|c| uuids.iter().any(|u| u == c.uuid.as_str()))
                    .collect(),
                None => {
                    let from = body["start_date"].as_i64().unwrap_or(0);
                    let to = body["end_date"].as_i64().unwrap_or(i64::MAX);
                    cheques
                        .iter()
                        .filter(|c| c.date >= from && c.date <= to)
                        .collect()
                }
            };
            rows.sort_by_key(|c| (c.date, c.uuid.clone()));
            axum::Json(page(rows.into_iter().map(cheque_json).collect(), &body))
        }
        ("chequeitemoperation", "get") => {
            tokio::time::sleep(delay).await;
            let uuid = body["doc_sale_uuid"].as_str().unwrap_or_default();
            let rows = cheques
                .iter()
                .filter(|c| c.uuid == uuid)
                .flat_map(|c| c.lines.iter().enumerate().map(|(n, l)| line_json(c, n, l)))
                .collect();
            axum::Json(page(rows, &body))
        }
        // The flattened rows answer in their own envelope.
        ("sale", "get") => {
            let offset = body["offset"].as_u64().unwrap_or(0) as usize;
            let result: Vec<Value> = sale_rows.iter().skip(offset).take(CAP).cloned().collect();
            axum::Json(json!({"success": true, "result": result, "total_count": sale_rows.len()}))
        }
        _ => axum::Json(
            json!({"ok": false, "result": {"error": 1001, "description": "Unknown method"}}),
        ),
    }
}

async fn fake_regos(cheques: Vec<Cheque>) -> (String, Shared) {
    let shared = Arc::new(Mutex::new(Gateway {
        cheques,
        calls: 0,
        throttle_every: 5,
        refuse: false,
        delay: Duration::ZERO,
        sale_rows: Vec::new(),
    }));
    let app = Router::new()
        .route("/gateway/out/{key}/v1/{entity}/{verb}", post(gateway))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), shared)
}

// ---------------------------------------------------------------------------
// Expected numbers

#[derive(Default, Debug, PartialEq)]
struct Expected {
    total: Decimal,
    refunds: Decimal,
    count: i64,
    items: Decimal,
}

fn decimal(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

fn amount(cheque: &Cheque) -> (Decimal, Decimal) {
    cheque.lines.iter().filter(|line| !line.storno).fold(
        (Decimal::ZERO, Decimal::ZERO),
        |(amount, items), line| {
            (
                amount + decimal(line.qty) * decimal(line.price),
                items + decimal(line.qty),
            )
        },
    )
}

/// Per local day, per branch, per cashier: what the closed cheques add.
fn expected(cheques: &[Cheque]) -> [BTreeMap<String, Expected>; 3] {
    let mut out: [BTreeMap<String, Expected>; 3] = Default::default();
    for cheque in cheques.iter().filter(|c| c.status == "Closed") {
        let local_day = chrono::DateTime::from_timestamp(cheque.date, 0)
            .expect("date")
            .with_timezone(&ZONE)
            .date_naive()
            .to_string();
        let branch = match cheque.lines[0].stock {
            1 => "B1".to_string(),
            other => format!("regos-stock-{other}"),
        };
        let (sum, items) = amount(cheque);
        for (map, key) in out
            .iter_mut()
            .zip([local_day, branch, cheque.cashier.to_string()])
        {
            let entry = map.entry(key).or_default();
            if cheque.is_return {
                entry.refunds += sum;
            } else {
                entry.total += sum;
                entry.count += 1;
                entry.items += items;
            }
        }
    }
    out
}

fn actual(rows: &Value, key: &str) -> BTreeMap<String, Expected> {
    let number = |row: &Value, field: &str| decimal(row[field].as_str().expect(field));
    rows.as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            (
                row[key].as_str().expect("key").to_string(),
                Expected {
                    total: number(row, "total_amount"),
                    refunds: number(row, "refunds_amount"),
                    count: row["sales_count"].as_i64().expect("count"),
                    items: number(row, "items_sold"),
                },
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Helpers

fn config(db: &TestDb, backend: Backend) -> karvon_app::Config {
    let mut config = test_config(db);
    if backend == Backend::Postgres {
        config.secrets_key = Some("44".repeat(32));
    }
    config
}

async fn start(backend: Backend) -> (TestDb, TestApp) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app_with(config(&db, backend), karvon_app::Role::All)
        .await
        .expect("app");
    execute(
        &app.db,
        "UPDATE tenants SET time_zone = 'Asia/Tashkent' WHERE tenant_id = 'default'",
    )
    .await
    .expect("zone");
    (db, app)
}

fn settings(base: &str) -> Value {
    json!({"base_url": base, "connected_integration_id": CONNECTED,
           "branch_map": {"1": "B1"}, "chunk_size": 4})
}

async fn regos_integration(app: &TestApp, base: &str) -> String {
    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": "regos", "name": "REGOS", "settings": settings(base),
                    "secrets": {"integration_key": KEY}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["data"]["id"].as_str().expect("id").to_string()
}

const WINDOW: &str = r#"{"date_from": "2026-01-01", "date_to": "2026-01-03"}"#;

async fn sync(client: &reqwest::Client, base: &str, integration: &str) -> String {
    let response = client
        .post(format!(
            "{base}/api/v1/integration/regos/sync/{integration}/"
        ))
        .header("content-type", "application/json")
        .body(WINDOW)
        .send()
        .await
        .expect("sync");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.expect("json");
    body["data"]["task_id"].as_str().expect("task").to_string()
}

async fn sales_report(client: &reqwest::Client, base: &str) -> Value {
    let response = client
        .get(format!(
            "{base}/api/integrations/real-time-sales?period=daily&date_from=2026-01-01&date_to=2026-01-03"
        ))
        .send()
        .await
        .expect("report");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    body["data"].clone()
}

/// The report equals the numbers computed from the fake's cheques.
fn assert_report(report: &Value, cheques: &[Cheque]) {
    let [days, branches, cashiers] = expected(cheques);
    assert_eq!(actual(&report["buckets"], "period_start"), days, "{report}");
    assert_eq!(
        actual(&report["by_branch"], "branch_id"),
        branches,
        "{report}"
    );
    assert_eq!(
        actual(&report["by_cashier"], "cashier"),
        cashiers,
        "{report}"
    );
}

async fn sale_events(db: &karvon_tests::Db) -> i64 {
    fetch_strings(
        db,
        "SELECT CAST(count(*) AS TEXT) FROM events WHERE aggregate_type = 'Sale'",
    )
    .await
    .expect("count")[0]
        .parse()
        .expect("number")
}

async fn caught_up(app: &TestApp) {
    karvon_tests::wait_caught_up(
        &app.db,
        &[names::SALES, names::SALES_STOCK],
        Duration::from_secs(60),
    )
    .await
    .expect("caught up");
}

// ---------------------------------------------------------------------------
// Tests

const CHEQUES: usize = 24;

async fn a_window_synced_twice_counts_each_cheque_once(backend: Backend) {
    let (_db, app) = start(backend).await;
    // One product known by its REGOS id, one by barcode; item 9xx unknown.
    for body in [
        json!({"product_id": "TEA", "sku": "TEA", "name": "Tea", "category": "c", "unit": "pcs",
               "external_refs": {"regos": "101"}}),
        json!({"product_id": "SUGAR", "sku": "SUG", "name": "Sugar", "category": "c",
               "unit": "kg", "barcode": "0478000000024"}),
    ] {
        let (status, body) = app.post("/api/v1/products", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // The sync looks products up in the catalogue read model: let it
    // show them first (a sync started before that calls them unknown).
    karvon_tests::wait_caught_up(&app.db, &[names::CATALOG], Duration::from_secs(60))
        .await
        .expect("catalogue caught up");
    let all = cheques(CHEQUES);
    let (base, fake) = fake_regos(all.clone()).await;
    let id = regos_integration(&app, &base).await;
    let closed = all.iter().filter(|c| c.status == "Closed").count() as i64;

    let task = sync(&app.client, &app.address, &id).await;
    let done = finished(&app.client, &app.address, &task).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["kind"], "sales");
    assert_eq!(
        (done["total"].as_i64(), done["created"].as_i64()),
        (Some(closed), Some(closed)),
        "{done}"
    );
    caught_up(&app).await;
    let report = sales_report(&app.client, &app.address).await;
    assert_report(&report, &all);
    let events = sale_events(&app.db).await;
    assert_eq!(events, closed);

    // Each product the catalogue does not know raises one alert.
    let unknown = all
        .iter()
        .filter(|c| c.status == "Closed" && c.lines.len() == 3 && !c.lines[2].storno)
        .count();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, alerts) = app
            .get("/api/v1/alerts?kind=unknown_product&limit=500")
            .await;
        let raised = alerts["data"]["items"].as_array().map_or(0, Vec::len);
        if raised == unknown {
            assert!(
                alerts["data"]["items"][0]["subject"]
                    .as_str()
                    .is_some_and(|subject| subject.starts_with("product:regos:9")),
                "{alerts}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{raised} of {unknown} unknown_product alerts"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The same window again: nothing new.
    let task = sync(&app.client, &app.address, &id).await;
    let again = finished(&app.client, &app.address, &task).await;
    assert_eq!(again["unchanged"].as_i64(), Some(closed), "{again}");
    assert_eq!(sale_events(&app.db).await, events);
    caught_up(&app).await;
    assert_report(&sales_report(&app.client, &app.address).await, &all);

    // Matching: by REGOS id (TEA), by barcode (SUGAR), else `regos:<item>`;
    // stock at B1 follows: sales take, returns bring back.
    for (product, line) in [("TEA", 0), ("SUGAR", 1), ("regos:900", 2)] {
        let (status, stock) = app
            .get(&format!(
                "/api/integrations/inventory-levels?warehouse_id=B1&product_id={product}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{stock}");
        let on_hand = stock["data"]["items"][0]["on_hand"].as_str().map(decimal);
        let moved: Decimal = all
            .iter()
            .filter(|c| c.status == "Closed" && c.lines[0].stock == 1)
            .filter_map(|c| c.lines.get(line).filter(|l| !l.storno).map(|l| (c, l)))
            .filter(|(_, l)| line != 2 || l.item == 900)
            .map(|(c, l)| {
                if c.is_return {
                    decimal(l.qty)
                } else {
                    -decimal(l.qty)
                }
            })
            .sum();
        assert_eq!(on_hand, Some(moved), "{product}: {stock}");
    }

    // A cheque changed in REGOS: corrected, totals follow.
    let changed = {
        let mut gateway = fake.lock().expect("gateway");
        gateway.cheques[1].lines[0].qty = "5";
        gateway.cheques.clone()
    };
    let task = sync(&app.client, &app.address, &id).await;
    let third = finished(&app.client, &app.address, &task).await;
    assert_eq!(third["updated"], 1, "{third}");
    caught_up(&app).await;
    assert_report(&sales_report(&app.client, &app.address).await, &changed);
    assert!(fake.lock().expect("gateway").calls > 0);
}

async fn a_refused_request_ends_the_task_with_regos_description(backend: Backend) {
    let (_db, app) = start(backend).await;
    let (base, fake) = fake_regos(cheques(6)).await;
    fake.lock().expect("gateway").refuse = true;
    let id = regos_integration(&app, &base).await;
    let task = sync(&app.client, &app.address, &id).await;
    let done = finished(&app.client, &app.address, &task).await;
    assert_eq!(done["status"], "error", "{done}");
    let message = done["message"].as_str().unwrap_or_default();
    assert!(message.contains("1008"), "{message}");
    assert!(message.contains("parameters are invalid"), "{message}");
    assert!(
        !message.contains(KEY),
        "the key stays out of messages: {message}"
    );
    assert_eq!(sale_events(&app.db).await, 0);
    let (status, _) = app.get("/api/v1/products").await;
    assert_eq!(status, StatusCode::OK);
}

async fn webhooks_check_the_connected_id_and_record_each_event_once(backend: Backend) {
    let (_db, app) = start(backend).await;
    let all = cheques(3);
    let (base, _fake) = fake_regos(all.clone()).await;
    let id = regos_integration(&app, &base).await;
    let url = app.url(&format!("/api/v1/integration/regos/webhook/{id}/"));
    let envelope = |connected: &str, event: &str| {
        json!({"action": "HandleWebhook", "event_id": event, "occurred_at": "2026-01-01T06:12:05Z",
               "connected_integration_id": connected,
               "data": {"action": "DocChequeClosed", "data": {"uuid": all[0].uuid}}})
    };
    let plain = reqwest::Client::new();
    let response = plain
        .post(&url)
        .json(&envelope("someone-else", "e-1"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sale_events(&app.db).await, 0, "a wrong id records nothing");

    for _ in 0..2 {
        let response = plain
            .post(&url)
            .json(&envelope(CONNECTED, "e-2"))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while sale_events(&app.db).await == 0 {
        assert!(Instant::now() < deadline, "the cheque was not recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sale_events(&app.db).await,
        1,
        "the same event_id records once"
    );
    caught_up(&app).await;
    assert_report(&sales_report(&app.client, &app.address).await, &all[..1]);

    // Guessing the connected id is throttled like failed logins: past 60
    // wrong guesses a minute the peer is answered 429, even with the
    // right id, until its window ends.
    let second = chrono::Utc::now().timestamp() % 60;
    if second > 45 {
        // Stay inside one one-minute window.
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
    let mut statuses = Vec::new();
    for n in 0..61 {
        let guess = envelope(&format!("guess-{n}"), &format!("g-{n}"));
        statuses.push(
            plain
                .post(&url)
                .json(&guess)
                .send()
                .await
                .expect("send")
                .status(),
        );
    }
    assert!(
        statuses[..59]
            .iter()
            .all(|status| *status == StatusCode::UNAUTHORIZED),
        "{statuses:?}"
    );
    assert_eq!(statuses[60], StatusCode::TOO_MANY_REQUESTS, "{statuses:?}");
    let response = plain
        .post(&url)
        .json(&envelope(CONNECTED, "e-3"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
}

async fn kill_9_mid_sync_counts_each_cheque_once(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let all = cheques(CHEQUES);
    let (base, fake) = fake_regos(all.clone()).await;
    fake.lock().expect("gateway").delay = Duration::from_millis(150);
    let env: Vec<(&str, String)> = match backend {
        Backend::Postgres => vec![("KARVON_SECRETS_KEY", "44".repeat(32))],
        Backend::Sqlite => Vec::new(),
    };
    let mut server = KarvonProcess::start(&db, &env).await;
    let store = db.db().await.expect("store");
    execute(
        &store,
        "UPDATE tenants SET time_zone = 'Asia/Tashkent' WHERE tenant_id = 'default'",
    )
    .await
    .expect("zone");
    let (status, body) = server
        .post(
            "/api/v1/integrations",
            json!({"kind": "regos", "name": "REGOS", "settings": settings(&base),
                   "secrets": {"integration_key": KEY}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["data"]["id"].as_str().expect("id").to_string();
    let task = sync(&server.client, &server.address, &id).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let created = fetch_strings(
            &store,
            "SELECT CAST(count(*) AS TEXT) FROM events WHERE aggregate_type = 'Sale'",
        )
        .await
        .expect("count")[0]
            .parse::<i64>()
            .expect("number");
        if created >= 4 {
            server.kill();
            assert!(created < 20, "the kill must land mid-sync ({created})");
            break;
        }
        assert!(Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fake.lock().expect("gateway").delay = Duration::ZERO;
    let server = KarvonProcess::start(&db, &env).await;
    let done = finished(&server.client, &server.address, &task).await;
    assert_eq!(done["status"], "completed", "{done}");
    let closed = all.iter().filter(|c| c.status == "Closed").count() as i64;
    assert_eq!(done["processed"].as_i64(), Some(closed), "{done}");
    assert_eq!(sale_events(&store).await, closed, "each cheque once");
    karvon_tests::wait_caught_up(&store, &[names::SALES], Duration::from_secs(60))
        .await
        .expect("caught up");
    assert_report(&sales_report(&server.client, &server.address).await, &all);
    store.close().await;
}

/// A daily run missed while no instance was up starts when one starts,
/// once per day however many instances start.
async fn a_missed_daily_run_starts_at_start_once(backend: Backend) {
    let (db, app) = start(backend).await;
    let (base, _fake) = fake_regos(cheques(3)).await;
    let id = regos_integration(&app, &base).await;
    // Registered two days ago, with a sync time long past today: the
    // instance was down when it was due.
    let backdate = match backend {
        Backend::Postgres => {
            "UPDATE integrations SET created_at = now() - interval '2 days', settings = jsonb_set(settings, '{sync_time}', '\"00:00\"')"
        }
        Backend::Sqlite => {
            "UPDATE integrations SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 days'), settings = json_set(settings, '$.sync_time', '00:00')"
        }
    };
    execute(&app.db, backdate).await.expect("backdate");
    app.stop().await.expect("stop");

    for _ in 0..2 {
        let app = spawn_app_with(config(&db, backend), karvon_app::Role::All)
            .await
            .expect("app");
        let deadline = Instant::now() + Duration::from_secs(30);
        let job = loop {
            let jobs = fetch_strings(&app.db, "SELECT job_id FROM scheduled_runs")
                .await
                .expect("runs");
            if let Some(job) = jobs.first() {
                assert_eq!(jobs.len(), 1, "one run per day: {jobs:?}");
                break job.clone();
            }
            assert!(Instant::now() < deadline, "the missed run did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let done = finished(&app.client, &app.address, &job).await;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["kind"], "sales");
        assert_eq!(done["integration_id"], id.as_str());
        app.stop().await.expect("stop");
    }
}

/// `Sale/Get` rows (`fixtures/regos/sale-get.json`): one sale each, local
/// time, retail or wholesale, at the department's branch.
async fn flattened_sale_rows_map_the_same_way(backend: Backend) {
    let (_db, app) = start(backend).await;
    let (base, fake) = fake_regos(Vec::new()).await;
    let mut rows: Value =
        serde_json::from_str(include_str!("../../fixtures/regos/sale-get.json")).expect("fixture");
    rows["result"][0]["date"] = json!("2026-01-02T15:30:00");
    rows["result"][1]["date"] = json!("2026-01-03T00:30:00");
    fake.lock().expect("gateway").sale_rows = rows["result"].as_array().expect("rows").clone();
    let mut settings = settings(&base);
    settings["sales_source"] = json!("sale_rows");
    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": "regos", "name": "REGOS", "settings": settings,
                    "secrets": {"integration_key": KEY}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["data"]["id"].as_str().expect("id");
    let task = sync(&app.client, &app.address, id).await;
    let done = finished(&app.client, &app.address, &task).await;
    assert_eq!(
        (done["status"].as_str(), done["created"].as_i64()),
        (Some("completed"), Some(2)),
        "{done}"
    );
    caught_up(&app).await;
    let report = sales_report(&app.client, &app.address).await;
    let buckets = report["buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 2, "{report}");
    assert_eq!(buckets[0]["period_start"], "2026-01-02");
    assert_eq!(
        decimal(buckets[0]["retail_amount"].as_str().expect("retail")),
        Decimal::from(500_000)
    );
    assert_eq!(
        buckets[1]["period_start"], "2026-01-03",
        "00:30 local is the 3rd"
    );
    assert_eq!(
        decimal(buckets[1]["wholesale_amount"].as_str().expect("wholesale")),
        Decimal::from(500_000)
    );
    let branches: Vec<&str> = report["by_branch"]
        .as_array()
        .expect("branches")
        .iter()
        .filter_map(|row| row["branch_id"].as_str())
        .collect();
    assert_eq!(branches, ["B1", "regos-stock-2"], "{report}");
}

on_both_backends!(
    flattened_sale_rows_map_the_same_way,
    a_missed_daily_run_starts_at_start_once,
    a_window_synced_twice_counts_each_cheque_once,
    a_refused_request_ends_the_task_with_regos_description,
    webhooks_check_the_connected_id_and_record_each_event_once,
    kill_9_mid_sync_counts_each_cheque_once,
);
