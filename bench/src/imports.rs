//! 1C imports at the issue's scale: 100,000 products
//! - from a fake 1C SOAP service (one `GetProductList` answer, chunks of
//!   100 as the integration's default), and
//! - from an uploaded CommerceML pair (import.xml + offers.xml),
//!
//! each as products/s from the job's own start and finish times, beside
//! raw batch inserts of the same number of event-sized rows (100 per
//! transaction) on the same store; and `GET inventory-levels` p50/p99 at
//! 50 reads/s while the imports run, beside the same reads idle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::routing::post;
use karvon_app::{Config, Role};
use karvon_tests::{Db, TestApp, TestDb, append_raw_receipts, spawn_app_with, test_config};
use serde_json::{Value, json};

use crate::Latencies;

pub async fn run(db: &TestDb, products: usize) -> anyhow::Result<()> {
    let mut config: Config = test_config(db);
    config.log = "warn".into();
    config.secrets_key = Some("33".repeat(32));
    let app = spawn_app_with(config, Role::All).await?;
    // Something for inventory-levels to read: 20,000 stock lines.
    append_raw_receipts(&app.db, "W1", 20_000, 2_000).await?;
    karvon_tests::wait_caught_up(&app.db, &["stock"], Duration::from_secs(300)).await?;

    let levels = app.url("/api/integrations/inventory-levels?limit=50");
    let idle = reads_until(&app, &levels, Instant::now() + Duration::from_secs(5)).await?;

    let base = fake_soap(products).await?;
    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": "1c_soap", "name": "bench",
                    "settings": {"url": format!("{base}/ws"), "namespace": "http://erp.example.uz/exchange"},
                    "secrets": {"username": "u", "password": "p"}}),
        )
        .await;
    anyhow::ensure!(status.is_success(), "integration: {status} {body}");
    let id = body["data"]["id"].as_str().context("id")?.to_string();
    let (status, body) = app
        .post(
            &format!("/api/v1/integration/sync/nomenklatura/{id}/"),
            &json!({}),
        )
        .await;
    anyhow::ensure!(status.is_success(), "sync: {status} {body}");
    let task = body["data"]["task_id"]
        .as_str()
        .context("task")?
        .to_string();
    let (soap, busy) = during(&app, &task, &levels).await?;

    let dir = std::env::temp_dir().join(format!("karvon-bench-cml-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let (import, offers) = commerceml_files(&dir, products)?;
    let form = reqwest::multipart::Form::new()
        .part(
            "import",
            reqwest::multipart::Part::bytes(std::fs::read(&import)?).file_name("import.xml"),
        )
        .part(
            "offers",
            reqwest::multipart::Part::bytes(std::fs::read(&offers)?).file_name("offers.xml"),
        );
    let (status, body) = app
        .send(
            app.client
                .post(app.url("/api/v1/integration/import/commerceml"))
                .multipart(form),
        )
        .await;
    anyhow::ensure!(status.is_success(), "upload: {status} {body}");
    let task = body["data"]["task_id"]
        .as_str()
        .context("task")?
        .to_string();
    let (cml, _) = during(&app, &task, &levels).await?;
    let _ = std::fs::remove_dir_all(&dir);

    let raw = raw_batches(&app.db, products).await?;
    app.stop().await?;

    println!("== 1C import: {products} products ==");
    for (name, status) in [("SOAP (chunks of 100)", &soap), ("CommerceML upload", &cml)] {
        anyhow::ensure!(status["status"] == "completed", "{name}: {status}");
        println!(
            "{name:<28} {:>8.0} products/s  ({:.1}s, created {}, updated {})",
            rate(products, status),
            job_seconds(status),
            status["created"],
            status["updated"]
        );
    }
    println!(
        "baseline raw batch inserts   {raw:>8.0} rows/s  (100 event-sized rows per transaction)\n\
         ratio SOAP import / raw:     {:>8.2}",
        rate(products, &soap) / raw
    );
    println!(
        "GET inventory-levels idle:        p50 {:.1} ms  p99 {:.1} ms  ({} reads)",
        idle.percentile(0.5),
        idle.percentile(0.99),
        idle.0.len()
    );
    println!(
        "GET inventory-levels during SOAP: p50 {:.1} ms  p99 {:.1} ms  ({} reads; p99 ratio {:.1}x)\n",
        busy.percentile(0.5),
        busy.percentile(0.99),
        busy.0.len(),
        busy.percentile(0.99) / idle.percentile(0.99).max(0.001)
    );
    Ok(())
}

pub(crate) fn job_seconds(status: &Value) -> f64 {
    let time = |key: &str| {
        status[key]
            .as_str()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
    };
    match (time("started_at"), time("finished_at")) {
        (Some(start), Some(end)) => (end - start).num_milliseconds() as f64 / 1000.0,
        _ => f64::NAN,
    }
}

/// Polls a job's status until it finished.
pub(crate) async fn finished(app: &TestApp, task: &str) -> anyhow::Result<Value> {
    let url = app.url(&format!("/api/v1/integration/sync/status/{task}/"));
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let (_, body) = app.send(app.client.get(&url)).await;
        let status = &body["data"]["status"];
        if status == "completed" || status == "error" {
            return Ok(body["data"].clone());
        }
        anyhow::ensure!(Instant::now() < deadline, "the job did not finish: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rate(products: usize, status: &Value) -> f64 {
    products as f64 / job_seconds(status)
}

/// Reads `url` at 50 reads/s until `deadline`.
async fn reads_until(app: &TestApp, url: &str, deadline: Instant) -> anyhow::Result<Latencies> {
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        let started = Instant::now();
        let response = app.client.get(url).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        response.bytes().await?;
        samples.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20).saturating_sub(started.elapsed())).await;
    }
    Ok(Latencies::new(samples))
}

/// Reads `url` while job `task` runs; the job's last status and the reads.
async fn during(app: &TestApp, task: &str, url: &str) -> anyhow::Result<(Value, Latencies)> {
    let status_url = app.url(&format!("/api/v1/integration/sync/status/{task}/"));
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let (_, body) = app.send(app.client.get(&status_url)).await;
        let status = &body["data"]["status"];
        if status == "completed" || status == "error" {
            return Ok((body["data"].clone(), Latencies::new(samples)));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the import did not finish: {body}"
        );
        for _ in 0..10 {
            let started = Instant::now();
            let response = app.client.get(url).send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            response.bytes().await?;
            samples.push(started.elapsed());
            // A dashboard's pace: 50 reads/s, not a flood.
            tokio::time::sleep(Duration::from_millis(20).saturating_sub(started.elapsed())).await;
        }
    }
}

/// A SOAP service answering `GetProductList` with `products` products.
async fn fake_soap(products: usize) -> anyhow::Result<String> {
    let mut xml = String::from(
        r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><m:GetProductListResponse xmlns:m="http://erp.example.uz/exchange"><m:return>"#,
    );
    for n in 0..products {
        xml.push_str(&format!(
            "<m:Product><m:GUID>00000000-0000-4000-8000-{n:012}</m:GUID><m:Code>00-{n:08}</m:Code><m:Description>Товар №{n}</m:Description><m:Article>ART-{n}</m:Article><m:Unit code=\"796\">шт</m:Unit><m:Barcode>{}</m:Barcode><m:Price currency=\"UZS\">{}.{:02}</m:Price><m:ParentGUID>00000000-0000-0000-0000-000000000000</m:ParentGUID><m:IsFolder>false</m:IsFolder><m:DeletionMark>false</m:DeletionMark></m:Product>",
            4_780_000_000_000u64 + n as u64,
            1000 + n,
            n % 100
        ));
    }
    xml.push_str("</m:return></m:GetProductListResponse></soap:Body></soap:Envelope>");
    let body = Arc::new(xml);
    let app = Router::new().route(
        "/ws",
        post(move || {
            let body = body.clone();
            async move { (*body).clone() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{address}"))
}

/// import.xml and offers.xml with `products` products (other GUIDs than
/// the SOAP ones, so they are created, not compared).
fn commerceml_files(
    dir: &std::path::Path,
    products: usize,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use std::io::Write;
    let import = dir.join("import.xml");
    let offers = dir.join("offers.xml");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&import)?);
    write!(
        out,
        r#"<?xml version="1.0" encoding="UTF-8"?><КоммерческаяИнформация ВерсияСхемы="2.08"><Классификатор><Ид>cl</Ид><Группы><Группа><Ид>g-1</Ид><Наименование>Товары</Наименование></Группа></Группы></Классификатор><Каталог><Ид>cat</Ид><Товары>"#
    )?;
    for n in 0..products {
        write!(
            out,
            "<Товар><Ид>10000000-0000-4000-8000-{n:012}</Ид><Артикул>C-{n}</Артикул><Наименование>Товар {n}</Наименование><БазоваяЕдиница Код=\"796\">шт</БазоваяЕдиница><Группы><Ид>g-1</Ид></Группы></Товар>"
        )?;
    }
    write!(out, "</Товары></Каталог></КоммерческаяИнформация>")?;
    out.flush()?;
    let mut out = std::io::BufWriter::new(std::fs::File::create(&offers)?);
    write!(
        out,
        r#"<?xml version="1.0" encoding="UTF-8"?><КоммерческаяИнформация ВерсияСхемы="2.08"><ПакетПредложений><ТипыЦен><ТипЦены><Ид>r</Ид><Наименование>Розница</Наименование></ТипЦены></ТипыЦен><Предложения>"#
    )?;
    for n in 0..products {
        write!(
            out,
            "<Предложение><Ид>10000000-0000-4000-8000-{n:012}</Ид><Штрихкод>0{:012}</Штрихкод><Цены><Цена><ИдТипаЦены>r</ИдТипаЦены><ЦенаЗаЕдиницу>{}.50</ЦенаЗаЕдиницу></Цена></Цены></Предложение>",
            478_000_000_000u64 + n as u64,
            100 + n
        )?;
    }
    write!(
        out,
        "</Предложения></ПакетПредложений></КоммерческаяИнформация>"
    )?;
    out.flush()?;
    Ok((import, offers))
}

/// Rows/s of 100-row transactions of event-sized rows into a scratch table.
async fn raw_batches(db: &Db, rows: usize) -> anyhow::Result<f64> {
    let payload =
        json!({"ProductRegistered": {"product_id": "00000000-0000-4000-8000-000000000001",
        "sku": "ART-1", "name": "Товар №1", "category": "uncategorized", "unit": "шт",
        "barcode": "4780000000001", "price": "1001.01", "reorder_level": null,
        "external_refs": {"1c": "00000000-0000-4000-8000-000000000001"}}})
        .to_string();
    let started = Instant::now();
    match db {
        Db::Postgres(pool) => {
            sqlx::query("CREATE TABLE bench_raw (id text, seq bigint, payload jsonb)")
                .execute(pool)
                .await?;
            for batch in 0..rows.div_ceil(100) {
                let ids: Vec<String> = (0..100).map(|n| format!("{batch}-{n}")).collect();
                sqlx::query(
                    "INSERT INTO bench_raw SELECT id, 1, $2::jsonb FROM UNNEST($1::text[]) AS id",
                )
                .bind(&ids)
                .bind(&payload)
                .execute(pool)
                .await?;
            }
        }
        Db::Sqlite(sqlite) => {
            sqlx::query("CREATE TABLE bench_raw (id TEXT, seq INTEGER, payload TEXT)")
                .execute(&sqlite.writer)
                .await?;
            for batch in 0..rows.div_ceil(100) {
                let mut transaction = sqlite.writer.begin().await?;
                for n in 0..100 {
                    sqlx::query("INSERT INTO bench_raw VALUES ($1, 1, $2)")
                        .bind(format!("{batch}-{n}"))
                        .bind(&payload)
                        .execute(&mut *transaction)
                        .await?;
                }
                transaction.commit().await?;
            }
        }
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}
