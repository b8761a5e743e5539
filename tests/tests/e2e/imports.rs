//! 1C imports end to end: a fake 1C (SOAP web service and OData, speaking
//! the formats of `fixtures/1c/`) serving generated catalogues, the real
//! application importing from it in the background, progress read from
//! the status endpoint.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use karvon_projections::names;
use karvon_tests::{
    Backend, Db, KarvonProcess, TestApp, TestDb, fetch_strings, finished_job as finished,
    spawn_app_with, test_config,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const IMPORT_XML: &str = include_str!("../../fixtures/1c/commerceml-import.xml");
const OFFERS_XML: &str = include_str!("../../fixtures/1c/commerceml-offers.xml");
const CLIENTS_SOAP: &str = include_str!("../../fixtures/1c/soap-return-json-string.xml");
const FAULT_SOAP: &str = include_str!("../../fixtures/1c/soap-fault.xml");

// ---------------------------------------------------------------------------
// The fake 1C

#[derive(Clone, Debug)]
struct FakeProduct {
    guid: String,
    code: String,
    name: String,
    article: String,
    barcode: String,
    price: String,
    parent: String,
    folder: bool,
    deleted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Normal,
    Fault,
    Http500,
    /// Answers after this long.
    Slow(Duration),
    Truncated,
}

struct Fake {
    products: Vec<FakeProduct>,
    mode: Mode,
    requests: usize,
}

type Shared = Arc<Mutex<Fake>>;

const FOLDERS: usize = 5;

fn guid(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// `count` products under `FOLDERS` folders; every 7th barcode has a
/// leading zero, prices have two decimals.
fn catalogue(count: usize) -> Vec<FakeProduct> {
    let mut products: Vec<FakeProduct> = (0..FOLDERS)
        .map(|folder| FakeProduct {
            guid: guid(900_000 + folder),
            code: format!("F-{folder}"),
            name: format!("Group {folder}"),
            article: String::new(),
            barcode: String::new(),
            price: "0".into(),
            parent: "00000000-0000-0000-0000-000000000000".into(),
            folder: true,
            deleted: false,
        })
        .collect();
    products.extend((0..count).map(|n| FakeProduct {
        guid: guid(n),
        code: format!("00-{n:08}"),
        name: format!("Товар №{n}"),
        article: format!("ART-{n}"),
        barcode: if n % 7 == 0 {
            format!("0{:012}", 478_000_000_000u64 + n as u64)
        } else {
            format!("{}", 4_780_000_000_000u64 + n as u64)
        },
        price: format!("{}.{:02}", 1000 + n, n % 100),
        parent: guid(900_000 + n % FOLDERS),
        folder: false,
        deleted: false,
    }));
    products
}

fn soap_products(products: &[FakeProduct]) -> String {
    let mut xml = String::from(
        r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><m:GetProductListResponse xmlns:m="http://erp.example.uz/exchange"><m:return>"#,
    );
    for p in products {
        xml.push_str(&format!(
            "<m:Product><m:GUID>{}</m:GUID><m:Code>{}</m:Code><m:Description>{}</m:Description><m:Article>{}</m:Article><m:Unit code=\"796\">шт</m:Unit><m:Barcode>{}</m:Barcode><m:Price currency=\"UZS\">{}</m:Price><m:ParentGUID>{}</m:ParentGUID><m:IsFolder>{}</m:IsFolder><m:DeletionMark>{}</m:DeletionMark></m:Product>",
            p.guid, p.code, p.name, p.article, p.barcode, p.price, p.parent, p.folder, p.deleted
        ));
    }
    xml.push_str("</m:return></m:GetProductListResponse></soap:Body></soap:Envelope>");
    xml
}

fn odata_product(p: &FakeProduct) -> Value {
    // Edm.Double: the price goes out as a JSON number.
    let price: Value = serde_json::from_str(&p.price).expect("number");
    json!({
        "Ref_Key": p.guid, "DataVersion": "AAAAAQAAAAA=", "DeletionMark": p.deleted,
        "Parent_Key": p.parent, "IsFolder": p.folder, "Code": p.code,
        "Description": p.name, "Артикул": p.article, "Штрихкод": p.barcode,
        "ЕдиницаИзмерения_Key": "a1b2c3d4-0000-11ee-9c1a-00155d012345", "Цена": price,
    })
}

async fn soap(State(fake): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let (mode, products) = {
        let mut fake = fake.lock().expect("fake");
        fake.requests += 1;
        (fake.mode, fake.products.clone())
    };
    let action = headers
        .get("soapaction")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let xml = |text: String| {
        (
            [(axum::http::header::CONTENT_TYPE, "text/xml; charset=utf-8")],
            text,
        )
    };
    match mode {
        Mode::Fault => {
            return (
                AxumStatus::INTERNAL_SERVER_ERROR,
                xml(FAULT_SOAP.to_string()),
            )
                .into_response();
        }
        Mode::Http500 => {
            return (
                AxumStatus::INTERNAL_SERVER_ERROR,
                "<html>Internal Server Error</html>",
            )
                .into_response();
        }
        Mode::Slow(delay) => tokio::time::sleep(delay).await,
        Mode::Normal | Mode::Truncated => {}
    }
    if action.contains("GetClientList") || body.contains("GetClientList") {
        return xml(CLIENTS_SOAP.to_string()).into_response();
    }
    let mut text = soap_products(&products);
    if mode == Mode::Truncated {
        text.truncate(text.len() / 2);
    }
    xml(text).into_response()
}

async fn odata(
    State(fake): State<Shared>,
    Path(entity): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let products = {
        let mut fake = fake.lock().expect("fake");
        fake.requests += 1;
        fake.products.clone()
    };
    if entity != "Catalog_Номенклатура" {
        return (AxumStatus::NOT_FOUND, "no such entity").into_response();
    }
    let top: usize = query.get("$top").and_then(|v| v.parse().ok()).unwrap_or(20);
    let skip: usize = query.get("$skip").and_then(|v| v.parse().ok()).unwrap_or(0);
    let value: Vec<Value> = products
        .iter()
        .skip(skip)
        .take(top)
        .map(odata_product)
        .collect();
    axum::Json(json!({"odata.metadata": "…#Catalog_Номенклатура", "value": value})).into_response()
}

async fn fake_1c(products: Vec<FakeProduct>) -> (String, Shared) {
    let fake = Arc::new(Mutex::new(Fake {
        products,
        mode: Mode::Normal,
        requests: 0,
    }));
    let app = Router::new()
        .route("/trade/ws/exchange.1cws", post(soap))
        .route("/trade/odata/standard.odata/{entity}", get(odata))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/trade"), fake)
}

// ---------------------------------------------------------------------------
// Helpers

async fn start(backend: Backend) -> (TestDb, TestApp) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app_with(secrets(test_config(&db), backend), karvon_app::Role::All)
        .await
        .expect("app");
    (db, app)
}

/// The environment a `karvon serve` process needs for integration secrets.
pub fn secret_env(backend: Backend) -> Vec<(&'static str, String)> {
    match backend {
        Backend::Postgres => vec![("KARVON_SECRETS_KEY", "22".repeat(32))],
        Backend::Sqlite => Vec::new(),
    }
}

fn secrets(mut config: karvon_app::Config, backend: Backend) -> karvon_app::Config {
    if backend == Backend::Postgres {
        config.secrets_key = Some("22".repeat(32));
    }
    config
}

async fn integration(app: &TestApp, kind: &str, settings: Value) -> String {
    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": kind, "name": "1C", "settings": settings,
                    "secrets": {"username": "exchange", "password": "s3cret"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["data"]["id"].as_str().expect("id").to_string()
}

fn soap_settings(base: &str, extra: Value) -> Value {
    let mut settings = json!({"url": format!("{base}/ws/exchange.1cws"),
                              "namespace": "http://erp.example.uz/exchange"});
    if let (Some(settings), Some(extra)) = (settings.as_object_mut(), extra.as_object()) {
        settings.extend(extra.clone());
    }
    settings
}

async fn sync(app: &TestApp, what: &str, integration: &str) -> String {
    let (status, body) = app
        .post(
            &format!("/api/v1/integration/sync/{what}/{integration}/"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["status"], "started", "{body}");
    body["data"]["task_id"].as_str().expect("task").to_string()
}

/// The job's last status, once the read models have caught up with it.
async fn job_done(app: &TestApp, task: &str) -> Value {
    let done = finished(&app.client, &app.address, task).await;
    karvon_tests::wait_caught_up(
        &app.db,
        &[names::CATALOG, names::CUSTOMERS],
        Duration::from_secs(60),
    )
    .await
    .expect("read models catch up");
    done
}

async fn product_events(db: &Db) -> i64 {
    fetch_strings(
        db,
        "SELECT CAST(count(*) AS TEXT) FROM events WHERE aggregate_type = 'Product'",
    )
    .await
    .expect("count")[0]
        .parse()
        .expect("number")
}

fn counts(status: &Value) -> (i64, i64, i64, i64, i64, i64) {
    let n = |key: &str| status[key].as_i64().unwrap_or(-1);
    (
        n("total"),
        n("processed"),
        n("created"),
        n("updated"),
        n("unchanged"),
        n("errors"),
    )
}

// ---------------------------------------------------------------------------
// Tests

const PRODUCTS: usize = 20_000;

async fn import_20000_then_nothing_then_exactly_the_changes(
    app: &TestApp,
    fake: &Shared,
    id: &str,
) {
    let task = sync(app, "nomenklatura", id).await;
    let done = job_done(app, &task).await;
    assert_eq!(done["status"], "completed", "{done}");
    let n = PRODUCTS as i64;
    assert_eq!(counts(&done), (n, n, n, 0, 0, 0), "{done}");
    assert_eq!(done["progress_percent"], 100);
    assert_eq!(product_events(&app.db).await, n);

    // Exact text: the leading zero of a barcode, the price's decimals,
    // the folder as category, the GUID as id and external reference.
    let (status, body) = app.get(&format!("/api/v1/products/{}", guid(7))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let product = &body["data"];
    assert_eq!(product["barcode"], "0478000000007", "{product}");
    assert_eq!(product["price"], "1007.07", "{product}");
    assert_eq!(product["category"], "Group 2", "{product}");
    assert_eq!(product["external_refs"]["1c"], guid(7), "{product}");
    assert_eq!(product["sku"], "ART-7");

    // Again: nothing changed, nothing appended.
    let task = sync(app, "nomenklatura", id).await;
    let again = job_done(app, &task).await;
    assert_eq!(counts(&again), (n, n, 0, 0, n, 0), "{again}");
    assert_eq!(product_events(&app.db).await, n);

    // Ten changed, three deletion-marked: exactly those are written.
    {
        let mut fake = fake.lock().expect("fake");
        for n in 0..10 {
            let product = &mut fake.products[FOLDERS + 100 + n];
            product.price = format!("{}.99", 5000 + n);
        }
        for n in 0..3 {
            fake.products[FOLDERS + 200 + n].deleted = true;
        }
    }
    let task = sync(app, "nomenklatura", id).await;
    let third = job_done(app, &task).await;
    assert_eq!(counts(&third), (n, n, 0, 13, n - 13, 0), "{third}");
    assert_eq!(product_events(&app.db).await, n + 13);
    let (_, body) = app.get(&format!("/api/v1/products/{}", guid(100))).await;
    assert_eq!(body["data"]["price"], "5000.99", "{body}");
    let (_, body) = app.get(&format!("/api/v1/products/{}", guid(201))).await;
    assert_eq!(body["data"]["status"], "discontinued", "{body}");
}

async fn soap_imports_completely_then_only_changes(backend: Backend) {
    let (_db, app) = start(backend).await;
    let (base, fake) = fake_1c(catalogue(PRODUCTS)).await;
    let id = integration(&app, "1c_soap", soap_settings(&base, json!({}))).await;
    import_20000_then_nothing_then_exactly_the_changes(&app, &fake, &id).await;
}

async fn odata_imports_completely_then_only_changes(backend: Backend) {
    let (_db, app) = start(backend).await;
    let (base, fake) = fake_1c(catalogue(PRODUCTS)).await;
    let id = integration(
        &app,
        "1c_odata",
        json!({"base_url": format!("{base}/odata/standard.odata"), "page_size": 1000}),
    )
    .await;
    import_20000_then_nothing_then_exactly_the_changes(&app, &fake, &id).await;
    // 20,005 rows in pages of 1,000: 21 pages per run (the last one short).
    assert_eq!(fake.lock().expect("fake").requests, 3 * 21);
}

async fn clients_become_customers_keyed_by_guid(backend: Backend) {
    let (_db, app) = start(backend).await;
    let (base, _fake) = fake_1c(Vec::new()).await;
    let id = integration(&app, "1c_soap", soap_settings(&base, json!({}))).await;
    let task = sync(&app, "clients", &id).await;
    let done = job_done(&app, &task).await;
    assert_eq!(counts(&done), (2, 2, 2, 0, 0, 0), "{done}");
    assert_eq!(done["kind"], "clients");
    let (status, body) = app
        .get("/api/v1/customers/c1a2b3c4-8b3e-11ee-9c1a-00155d0a0001")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["name"], "OOO \"Baraka Savdo\"");
    assert_eq!(body["data"]["tax_id"], "301234567");
    assert_eq!(body["data"]["phone"], "+998901234567");
}

/// Each failure ends the job in `error` with a message naming the cause,
/// writes no product, and leaves the API answering.
async fn source_failures_are_clear_job_errors_and_write_nothing(backend: Backend) {
    let (_db, app) = start(backend).await;
    let (base, fake) = fake_1c(catalogue(300)).await;
    let id = integration(
        &app,
        "1c_soap",
        soap_settings(&base, json!({"timeout_secs": 1})),
    )
    .await;
    for (mode, expected) in [
        (Mode::Truncated, "malformed"),
        (Mode::Fault, "недостаточно прав"),
        (Mode::Http500, "HTTP 500"),
        (Mode::Slow(Duration::from_secs(3)), "within 1 s"),
    ] {
        fake.lock().expect("fake").mode = mode;
        let task = sync(&app, "nomenklatura", &id).await;
        let done = job_done(&app, &task).await;
        assert_eq!(done["status"], "error", "{mode:?}: {done}");
        let message = done["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{mode:?}: {message}");
        assert_eq!(done["processed"], 0, "{done}");
        assert_eq!(product_events(&app.db).await, 0, "{mode:?} wrote products");
        let (status, _) = app.get("/api/v1/products").await;
        assert_eq!(status, StatusCode::OK, "the API stays up after {mode:?}");
    }

    // A record with a malformed number is rejected with its reason; the
    // others are imported.
    {
        let mut fake = fake.lock().expect("fake");
        fake.mode = Mode::Normal;
        fake.products[FOLDERS + 17].price = "12,5x".into();
    }
    let task = sync(&app, "nomenklatura", &id).await;
    let done = job_done(&app, &task).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(counts(&done), (300, 300, 299, 0, 0, 1), "{done}");
    assert_eq!(done["rejected"][0]["ref"], guid(17), "{done}");
    assert!(
        done["rejected"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("12,5x"),
        "{done}"
    );
    assert_eq!(product_events(&app.db).await, 299);
}

async fn a_second_start_answers_the_running_job(backend: Backend) {
    let (_db, app) = start(backend).await;
    let (base, fake) = fake_1c(catalogue(10)).await;
    fake.lock().expect("fake").mode = Mode::Slow(Duration::from_secs(2));
    let id = integration(&app, "1c_soap", soap_settings(&base, json!({}))).await;
    let first = sync(&app, "nomenklatura", &id).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/integration/sync/nomenklatura/{id}/"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["task_id"], first.as_str());
    assert_eq!(body["data"]["status"], "running");
    // Clients are another kind: they start their own job.
    let clients = sync(&app, "clients", &id).await;
    assert_ne!(clients, first);
    let done = job_done(&app, &first).await;
    assert_eq!(done["created"], 10, "{done}");
    // Finished: the next start is a new job.
    let next = sync(&app, "nomenklatura", &id).await;
    assert_ne!(next, first);
}

async fn commerceml_upload_imports_price_types_and_variants(backend: Backend) {
    let (_db, app) = start(backend).await;
    let upload = |query: String| {
        let form = reqwest::multipart::Form::new()
            .part(
                "import",
                reqwest::multipart::Part::bytes(IMPORT_XML.as_bytes()).file_name("import.xml"),
            )
            .part(
                "offers",
                reqwest::multipart::Part::bytes(OFFERS_XML.as_bytes()).file_name("offers.xml"),
            );
        app.client
            .post(app.url(&format!("/api/v1/integration/import/commerceml{query}")))
            .multipart(form)
    };
    let (status, body) = app.send(upload(String::new())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task = body["data"]["task_id"].as_str().expect("task").to_string();
    let done = job_done(&app, &task).await;
    assert_eq!(done["status"], "completed", "{done}");
    // Two products and two variants of the T-shirt.
    assert_eq!(counts(&done), (4, 4, 4, 0, 0, 0), "{done}");

    let tea = "6f1c2a10-8b3e-11ee-9c1a-00155d012345";
    let (_, body) = app.get(&format!("/api/v1/products/{tea}")).await;
    let product = &body["data"];
    assert_eq!(product["barcode"], "0478000000017", "{product}");
    assert_eq!(
        product["price"], "18500",
        "the retail (Розница) price: {product}"
    );
    assert_eq!(product["category"], "Напитки", "{product}");
    assert_eq!(product["sku"], "TEA-G-100");
    let variant = "d1e2f3a4-0000-11ee-9c1a-00155d0000aa";
    let (status, body) = app.get(&format!("/api/v1/products/{variant}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["price"], "95000", "{body}");
    assert_eq!(body["data"]["barcode"], "4780000000031", "{body}");
    assert_eq!(body["data"]["sku"], "TSH-01", "{body}");

    // The wholesale price type, named by an integration's settings.
    let (base, _fake) = fake_1c(Vec::new()).await;
    let id = integration(
        &app,
        "1c_soap",
        soap_settings(&base, json!({"price_type": "Опт"})),
    )
    .await;
    let (status, body) = app.send(upload(format!("?integration={id}"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task = body["data"]["task_id"].as_str().expect("task").to_string();
    let done = job_done(&app, &task).await;
    // The tea takes its wholesale price; the variants have none of that
    // type, so they lose their price; the T-shirt itself had none.
    assert_eq!(counts(&done), (4, 4, 0, 3, 1, 0), "{done}");
    let (_, body) = app.get(&format!("/api/v1/products/{tea}")).await;
    assert_eq!(body["data"]["price"], "16200.50", "{body}");
    let (_, body) = app.get(&format!("/api/v1/products/{variant}")).await;
    assert_eq!(body["data"]["price"], Value::Null, "{body}");

    // No `import` part: a clear 400.
    let form = reqwest::multipart::Form::new().part(
        "offers",
        reqwest::multipart::Part::bytes(OFFERS_XML.as_bytes()),
    );
    let (status, body) = app
        .send(
            app.client
                .post(app.url("/api/v1/integration/import/commerceml"))
                .multipart(form),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

on_both_backends!(
    soap_imports_completely_then_only_changes,
    odata_imports_completely_then_only_changes,
    clients_become_customers_keyed_by_guid,
    source_failures_are_clear_job_errors_and_write_nothing,
    a_second_start_answers_the_running_job,
    commerceml_upload_imports_price_types_and_variants,
    kill_9_mid_import_finishes_with_the_same_state,
);

// ---------------------------------------------------------------------------
// kill -9

async fn kill_9_mid_import_finishes_with_the_same_state(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let (base, _fake) = fake_1c(catalogue(PRODUCTS)).await;
    let mut server = KarvonProcess::start(&db, &secret_env(backend)).await;
    // Small chunks: many commits, so the kill lands mid-job.
    let (status, body) = server
        .post(
            "/api/v1/integrations",
            json!({"kind": "1c_soap", "name": "1C",
               "settings": soap_settings(&base, json!({"chunk_size": 20})),
               "secrets": {"username": "u", "password": "p"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["data"]["id"].as_str().expect("id").to_string();
    let (status, body) = server
        .post(
            &format!("/api/v1/integration/sync/nomenklatura/{id}/"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task = body["data"]["task_id"].as_str().expect("task").to_string();

    // Wait until some chunks are in, then kill -9.
    let deadline = Instant::now() + Duration::from_secs(120);
    let processed_at_kill = loop {
        let body = job_status(&server, &task).await;
        let processed = body["data"]["processed"].as_i64().unwrap_or(0);
        if processed >= 1_000 {
            server.kill();
            break processed;
        }
        assert!(
            Instant::now() < deadline,
            "the job made no progress: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        processed_at_kill < PRODUCTS as i64,
        "the kill must land mid-job ({processed_at_kill} processed)"
    );

    let server = KarvonProcess::start(&db, &secret_env(backend)).await;
    let done = finished(&server.client, &server.address, &task).await;
    let n = PRODUCTS as i64;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(counts(&done), (n, n, n, 0, 0, 0), "{done}");
    let store = db.db().await.expect("store");
    assert_eq!(
        product_events(&store).await,
        n,
        "each product registered once"
    );
    let distinct: i64 = fetch_strings(
        &store,
        "SELECT CAST(count(DISTINCT aggregate_id) AS TEXT) FROM events
          WHERE aggregate_type = 'Product'",
    )
    .await
    .expect("count")[0]
        .parse()
        .expect("number");
    assert_eq!(distinct, n);
    store.close().await;
}

// ---------------------------------------------------------------------------
// Bounds: no upload or answer of one tenant stops the process or fills
// its memory (security review, 2026-12-07)

/// `<Группа><Ид>g</Ид><Группы>` nested `depth` times: the review's upload
/// that overflowed the stack and aborted the process.
fn nested_catalogue(depth: usize) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><КоммерческаяИнформация><Классификатор><Группы>{}{}</Группы></Классификатор></КоммерческаяИнформация>",
        "<Группа><Ид>g</Ид><Группы>".repeat(depth),
        "</Группы></Группа>".repeat(depth)
    )
}

fn upload_form(import: String) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new().part(
        "import",
        reqwest::multipart::Part::bytes(import.into_bytes()).file_name("import.xml"),
    )
}

async fn a_deeply_nested_upload_fails_its_job_and_the_server_stays_up(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut server = KarvonProcess::start(&db, &secret_env(backend)).await;
    let nested = nested_catalogue(5_000);
    assert!(nested.len() > 200_000, "the review's ~210 KB upload");
    let response = server
        .client
        .post(format!(
            "{}/api/v1/integration/import/commerceml",
            server.address
        ))
        .multipart(upload_form(nested))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.expect("json");
    let task = body["data"]["task_id"].as_str().expect("task").to_string();
    let done = finished(&server.client, &server.address, &task).await;
    assert_eq!(done["status"], "error", "{done}");
    let message = done["message"].as_str().unwrap_or_default();
    assert!(message.contains("nested deeper than 64"), "{done}");
    // Still serving, and still serving after a restart: nothing queued
    // takes it down again.
    let health = server
        .client
        .get(format!("{}/health", server.address))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    server.kill();
    let server = KarvonProcess::start(&db, &secret_env(backend)).await;
    let again = finished(&server.client, &server.address, &task).await;
    assert_eq!(again["status"], "error", "{again}");
    let products = server
        .client
        .get(format!("{}/api/v1/products", server.address))
        .send()
        .await
        .expect("products");
    assert_eq!(products.status(), StatusCode::OK);
}

/// Queues an upload on an API-only instance (no worker takes it).
async fn queued_upload(db: &TestDb, import: &str) -> String {
    let api = spawn_app_with(test_config(db), karvon_app::Role::Api)
        .await
        .expect("api");
    let (status, body) = api
        .send(
            api.client
                .post(api.url("/api/v1/integration/import/commerceml"))
                .multipart(upload_form(import.to_string())),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    api.stop().await.expect("stop");
    body["data"]["task_id"].as_str().expect("task").to_string()
}

async fn a_job_whose_runs_ended_the_process_three_times_fails(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let doomed = queued_upload(&db, IMPORT_XML).await;
    let store = db.db().await.expect("store");
    // As if three runs had each ended the process: counted, never taken back.
    karvon_tests::execute(
        &store,
        &format!("UPDATE import_queue SET starts = 3 WHERE job_id = '{doomed}'"),
    )
    .await
    .expect("count the starts");
    let app = spawn_app_with(test_config(&db), karvon_app::Role::All)
        .await
        .expect("app");
    let done = job_done(&app, &doomed).await;
    assert_eq!(done["status"], "error", "{done}");
    assert!(
        done["message"]
            .as_str()
            .is_some_and(|message| message.contains("started 3 times")),
        "{done}"
    );
    assert_eq!(product_events(&store).await, 0, "the job never ran again");
    app.stop().await.expect("stop");
    // Two such runs leave it a third: it runs and completes.
    let survivor = queued_upload(&db, IMPORT_XML).await;
    karvon_tests::execute(
        &store,
        &format!("UPDATE import_queue SET starts = 2 WHERE job_id = '{survivor}'"),
    )
    .await
    .expect("count the starts");
    let app = spawn_app_with(test_config(&db), karvon_app::Role::All)
        .await
        .expect("app");
    let done = job_done(&app, &survivor).await;
    assert_eq!(done["status"], "completed", "{done}");
    app.stop().await.expect("stop");
}

async fn uploads_are_limited_per_tenant_and_kept_private(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    // API only: nothing runs the jobs, so the uploads stay queued.
    let api = spawn_app_with(test_config(&db), karvon_app::Role::Api)
        .await
        .expect("api");
    let upload = |client: &reqwest::Client| {
        client
            .post(api.url("/api/v1/integration/import/commerceml"))
            .multipart(upload_form(IMPORT_XML.to_string()))
    };
    for n in 1..=2 {
        let (status, body) = api.send(upload(&api.client)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "upload {n}: {body}");
    }
    let refused = upload(&api.client).send().await.expect("third");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"], "rate_limited", "{body}");
    // Another tenant is not held up by this one's uploads.
    karvon_adapters::auth_store::create_tenant(&api.db, "other", "UTC")
        .await
        .expect("tenant");
    let other = karvon_tests::authorized_client(
        &karvon_app::auth::create_api_key(&api.db, "other", vec!["write".into()], None, None, None)
            .await
            .expect("key")
            .key,
    )
    .expect("client");
    let (status, body) = api.send(upload(&other)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Waiting uploads are readable by Karvon's user only.
    let dir = db.uploads_dir().expect("uploads dir");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir)
        .expect("uploads dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    api.stop().await.expect("stop");
}

/// The peak resident memory of process `pid` so far, in bytes.
fn peak_rss(pid: u32) -> u64 {
    karvon_tests::process_memory(pid, "VmHWM")
}

/// A job's status as `GET …/sync/status/{task}/` answers it.
async fn job_status(server: &KarvonProcess, task: &str) -> Value {
    server
        .client
        .get(format!(
            "{}/api/v1/integration/sync/status/{task}/",
            server.address
        ))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json")
}

/// Uploads `import` through `server` for `integration` (none: a plain
/// upload); the task id.
async fn upload_to(server: &KarvonProcess, integration: Option<&str>, import: String) -> String {
    let query = integration.map_or(String::new(), |id| format!("?integration={id}"));
    let response = server
        .client
        .post(format!(
            "{}/api/v1/integration/import/commerceml{query}",
            server.address
        ))
        .multipart(upload_form(import))
        .send()
        .await
        .expect("upload");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.expect("json");
    body["data"]["task_id"].as_str().expect("task").to_string()
}

/// Registers a `1c_soap` integration (its endpoint is never called) whose
/// chunks hold `chunk_size` records; its id.
async fn chunked_integration(server: &KarvonProcess, chunk_size: usize) -> String {
    let (status, body) = server
        .post(
            "/api/v1/integrations",
            json!({"kind": "1c_soap", "name": "1C",
                   "settings": soap_settings("http://127.0.0.1:9", json!({"chunk_size": chunk_size})),
                   "secrets": {"username": "u", "password": "p"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["data"]["id"].as_str().expect("id").to_string()
}

async fn a_300_mb_answer_fails_its_job_without_being_read_whole(backend: Backend) {
    // A 1C that answers 300 MB of one SOAP envelope, streamed (no length).
    async fn huge() -> Response {
        let chunk = axum::body::Bytes::from(vec![b'x'; 1 << 20]);
        let head = axum::body::Bytes::from_static(
            b"<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><m:R xmlns:m=\"urn:x\"><m:return>",
        );
        let body = futures::stream::iter(
            std::iter::once(head)
                .chain(std::iter::repeat_n(chunk, 300))
                .map(Ok::<_, std::io::Error>),
        );
        (
            [("content-type", "text/xml; charset=utf-8")],
            axum::body::Body::from_stream(body),
        )
            .into_response()
    }
    let fake = Router::new().route("/trade/ws/exchange.1cws", post(huge));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}/trade", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, fake).await });

    let db = TestDb::create_on(backend).await.expect("db");
    let server = KarvonProcess::start(&db, &secret_env(backend)).await;
    let (status, body) = server
        .post(
            "/api/v1/integrations",
            json!({"kind": "1c_soap", "name": "1C", "settings": soap_settings(&base, json!({})),
                   "secrets": {"username": "u", "password": "p"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["data"]["id"].as_str().expect("id").to_string();
    let before = peak_rss(server.child.id());
    let (status, body) = server
        .post(
            &format!("/api/v1/integration/sync/nomenklatura/{id}/"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task = body["data"]["task_id"].as_str().expect("task").to_string();
    let done = finished(&server.client, &server.address, &task).await;
    let after = peak_rss(server.child.id());
    println!(
        "300 MB answer: peak RSS {} MB before, {} MB after",
        before >> 20,
        after >> 20
    );
    assert_eq!(done["status"], "error", "{done}");
    assert!(
        done["message"]
            .as_str()
            .is_some_and(|message| message.contains("larger than 67108864 bytes")),
        "{done}"
    );
    assert!(
        after.saturating_sub(before) < 100 << 20,
        "peak RSS grew {} MB",
        (after - before) >> 20
    );
}

on_both_backends!(
    a_deeply_nested_upload_fails_its_job_and_the_server_stays_up,
    a_job_whose_runs_ended_the_process_three_times_fails,
    uploads_are_limited_per_tenant_and_kept_private,
    a_300_mb_answer_fails_its_job_without_being_read_whole,
);

/// `count` products named with `name_chars` characters (2 bytes each;
/// names are at most 200 characters).
fn big_catalogue(prefix: &str, count: usize, name_chars: usize) -> String {
    let name = "Ж".repeat(name_chars);
    let mut import = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><КоммерческаяИнформация><Каталог><Товары>",
    );
    for n in 0..count {
        import.push_str(&format!(
            "<Товар><Ид>{prefix}-{n:06}</Ид><Артикул>A{n}</Артикул><Наименование>{name} {n}</Наименование><БазоваяЕдиница>шт</БазоваяЕдиница></Товар>"
        ));
    }
    import.push_str("</Товары></Каталог></КоммерческаяИнформация>");
    import
}

/// An upload is read as a stream, chunk by chunk: the process's memory
/// does not grow with the file (it held the whole catalogue while
/// parsing). Uploads of 2,000 and 40,000 products (1 MB and 22 MB): the
/// second may raise the process's peak by a fraction of the difference
/// only (measured: +1–6 MB; reading the file whole, +30–44 MB).
async fn a_large_upload_is_imported_without_holding_the_file(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    // Small projection steps: the read models' batches of these large
    // events are not what this test measures.
    let mut env = secret_env(backend);
    env.push(("KARVON_PROJECTION_BATCH_SIZE", "50".to_string()));
    let server = KarvonProcess::start(&db, &env).await;
    let id = chunked_integration(&server, 200).await;
    let mut peaks = Vec::new();
    let mut sizes = Vec::new();
    let mut counted = Vec::new();
    for (prefix, products) in [("small", 2_000), ("large", 40_000)] {
        counted.push(products);
        let import = big_catalogue(prefix, products, 190);
        sizes.push(import.len() as u64);
        let task = upload_to(&server, Some(&id), import).await;
        let done = finished(&server.client, &server.address, &task).await;
        let n = products as i64;
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(counts(&done), (n, n, n, 0, 0, 0), "{done}");
        peaks.push(peak_rss(server.child.id()));
    }
    println!(
        "uploads of {:?} products, {} MB then {} MB: peak RSS {} MB then {} MB",
        counted,
        sizes[0] >> 20,
        sizes[1] >> 20,
        peaks[0] >> 20,
        peaks[1] >> 20
    );
    let (grown, larger) = (peaks[1].saturating_sub(peaks[0]), sizes[1] - sizes[0]);
    assert!(
        grown < larger / 2,
        "a {} MB larger file raised the peak by {} MB",
        larger >> 20,
        grown >> 20
    );
}

on_both_backends!(a_large_upload_is_imported_without_holding_the_file);

/// An upload read as a stream resumes after `kill -9` at its next chunk
/// (the stream skips what was committed): every product once.
async fn kill_9_mid_upload_resumes_at_its_next_chunk(backend: Backend) {
    const COUNT: usize = 3_000;
    let db = TestDb::create_on(backend).await.expect("db");
    let mut server = KarvonProcess::start(&db, &secret_env(backend)).await;
    let id = chunked_integration(&server, 20).await;
    let task = upload_to(&server, Some(&id), big_catalogue("resume", COUNT, 20)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let processed_at_kill = loop {
        let body = job_status(&server, &task).await;
        let processed = body["data"]["processed"].as_i64().unwrap_or(0);
        if processed >= 500 {
            server.kill();
            break processed;
        }
        assert!(Instant::now() < deadline, "no progress: {body}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        processed_at_kill < COUNT as i64,
        "the kill must land mid-job ({processed_at_kill} processed)"
    );
    let server = KarvonProcess::start(&db, &secret_env(backend)).await;
    let done = finished(&server.client, &server.address, &task).await;
    let n = COUNT as i64;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(counts(&done), (n, n, n, 0, 0, 0), "{done}");
    let store = db.db().await.expect("store");
    assert_eq!(
        product_events(&store).await,
        n,
        "each product registered once"
    );
    store.close().await;
}

on_both_backends!(kill_9_mid_upload_resumes_at_its_next_chunk);
