//! REGOS sync at the scale: 10,000 closed cheques of 3 lines from
//! a fake gateway in this process (pages of 500 cheques, one lines request
//! per cheque), the client's own rate limit switched off: cheques/s from
//! the job's own start and finish times, beside the same requests made
//! straight to the gateway (fetching alone, nothing stored).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::Path;
use axum::routing::post;
use karvon_app::{Config, Role};
use karvon_tests::{TestDb, spawn_app_with, test_config};
use serde_json::{Value, json};

use crate::imports::{finished, job_seconds};

const KEY: &str = "benchkey0000000000000000000000000";

pub async fn run(db: &TestDb, cheques: usize) -> anyhow::Result<()> {
    let base = fake_gateway(cheques).await?;
    let mut config: Config = test_config(db);
    config.log = "warn".into();
    config.secrets_key = Some("33".repeat(32));
    let app = spawn_app_with(config, Role::All).await?;
    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": "regos", "name": "bench",
                    "settings": {"base_url": base, "connected_integration_id": "c",
                                 "client_rate_limit": false},
                    "secrets": {"integration_key": KEY}}),
        )
        .await;
    anyhow::ensure!(status.is_success(), "integration: {status} {body}");
    let id = body["data"]["id"].as_str().context("id")?.to_string();
    let (status, body) = app
        .post(
            &format!("/api/v1/integration/regos/sync/{id}/"),
            &json!({"date_from": "2026-01-01", "date_to": "2026-01-31"}),
        )
        .await;
    anyhow::ensure!(status.is_success(), "sync: {status} {body}");
    let task = body["data"]["task_id"]
        .as_str()
        .context("task")?
        .to_string();
    let done = finished(&app, &task).await?;
    anyhow::ensure!(done["status"] == "completed", "sync: {done}");
    app.stop().await?;

    // Baseline: the same requests, straight to the gateway.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut offset = 0;
    while offset < cheques {
        let page: Value = client
            .post(format!("{base}/gateway/out/{KEY}/v1/DocCheque/Get"))
            .json(&json!({"limit": 500, "offset": offset}))
            .send()
            .await?
            .json()
            .await?;
        offset += page["result"].as_array().map_or(0, Vec::len).max(1);
    }
    for n in 0..cheques {
        let _: Value = client
            .post(format!(
                "{base}/gateway/out/{KEY}/v1/chequeitemoperation/get"
            ))
            .json(&json!({"doc_sale_uuid": uuid(n), "limit": 500, "offset": 0}))
            .send()
            .await?
            .json()
            .await?;
    }
    let fetch_rate = cheques as f64 / started.elapsed().as_secs_f64();
    let rate = cheques as f64 / job_seconds(&done);
    println!("== REGOS sync: {cheques} cheques × 3 lines (client rate limit off) ==");
    println!(
        "sync job (chunks of 100):        {rate:>8.0} cheques/s  ({:.1}s, created {})",
        job_seconds(&done),
        done["created"]
    );
    println!(
        "baseline: the same requests only {fetch_rate:>8.0} cheques/s  (ratio {:.2})\n",
        rate / fetch_rate
    );
    Ok(())
}

fn uuid(n: usize) -> String {
    format!("5e000000-0000-4000-8000-{n:012}")
}

async fn fake_gateway(cheques: usize) -> anyhow::Result<String> {
    // 2026-01-02 .. spread over the month, all closed.
    let start = 1_767_290_400i64;
    let rows: Arc<Vec<Value>> = Arc::new(
        (0..cheques)
            .map(|n| {
                json!({"uuid": uuid(n), "date": start + (n as i64 * 2_000) % 2_400_000,
                       "code": "A", "status": "Closed", "is_return": false,
                       "cashier": {"id": 1, "full_name": format!("Cashier {}", n % 8)}})
            })
            .collect(),
    );
    let handler = move |Path((_key, entity, _verb)): Path<(String, String, String)>,
                        axum::Json(body): axum::Json<Value>| {
        let rows = rows.clone();
        async move {
            if entity.eq_ignore_ascii_case("DocCheque") {
                let offset = body["offset"].as_u64().unwrap_or(0) as usize;
                let limit = body["limit"].as_u64().unwrap_or(500).min(500) as usize;
                let page: Vec<Value> = rows.iter().skip(offset).take(limit).cloned().collect();
                return axum::Json(json!({"ok": true, "result": page,
                    "next_offset": offset + page.len(), "total": rows.len()}));
            }
            let uuid = body["doc_sale_uuid"].as_str().unwrap_or_default();
            let lines: Vec<Value> = (0..3)
                .map(|n| {
                    json!({"document": uuid, "item": {"id": 100 + n, "base_barcode": ""},
                           "stock_id": 1 + n % 2, "quantity": 2, "price": 1500.25,
                           "has_storno": false})
                })
                .collect();
            axum::Json(json!({"ok": true, "result": lines, "next_offset": 3, "total": 3}))
        }
    };
    let app = Router::new().route("/gateway/out/{key}/v1/{entity}/{verb}", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(format!("http://{address}"))
}
