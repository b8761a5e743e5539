//! Idempotency keys: one set of events per key, identical answers, and
//! exactly-once application across a `kill -9` of the server.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use karvon_projections::names;
use karvon_tests::{
    Backend, TestDb, admin_key, event_count, fetch_strings, karvon_binary, product,
    projected_stock, spawn_app, wait_caught_up,
};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Mutex;

async fn the_same_key_twice_appends_once_and_answers_identically(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    app.post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "3"});
    let before = event_count(&app.db).await.expect("count");

    let first = app
        .post_keyed("/api/v1/stock/receipts", "rcpt-1", &receipt)
        .await;
    let second = app
        .post_keyed("/api/v1/stock/receipts", "rcpt-1", &receipt)
        .await;
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(
        first, second,
        "a retried key must answer exactly as the first time"
    );
    assert_eq!(event_count(&app.db).await.expect("count"), before + 1);

    // Ten concurrent twins: still one append, one answer.
    let mut twins = Vec::new();
    for _ in 0..10 {
        let client = app.client.clone();
        let url = app.url("/api/v1/stock/receipts");
        let body = receipt.clone();
        twins.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .header("Idempotency-Key", "rcpt-2")
                .json(&body)
                .send()
                .await
                .expect("send");
            (
                response.status(),
                response.json::<serde_json::Value>().await.expect("json"),
            )
        }));
    }
    let mut answers = Vec::new();
    for twin in twins {
        answers.push(twin.await.expect("task"));
    }
    assert!(
        answers.iter().all(|answer| *answer == answers[0]),
        "{answers:?}"
    );
    assert_eq!(event_count(&app.db).await.expect("count"), before + 2);

    // The same key with another body is a client error, not a silent replay.
    let other = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "4"});
    let (status, body) = app
        .post_keyed("/api/v1/stock/receipts", "rcpt-1", &other)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "idempotency_key_reused");
    assert_eq!(event_count(&app.db).await.expect("count"), before + 2);

    let (_, body) = app
        .get_after(
            "/api/integrations/inventory-levels",
            &second.1["data"]["position"],
        )
        .await;
    wait_caught_up(&app.db, &[names::STOCK], Duration::from_secs(10))
        .await
        .expect("caught up");
    let (_, body2) = app.get("/api/integrations/inventory-levels").await;
    assert!(body["success"] == json!(true));
    assert_eq!(body2["data"]["items"][0]["on_hand"], "6");
    app.stop().await.expect("stop");
}

struct Server {
    child: Child,
    address: String,
    /// Sends an admin key of tenant `default`.
    client: reqwest::Client,
}

async fn start_server(db: &TestDb) -> Server {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        listener.local_addr().expect("addr").port()
    };
    let child = Command::new(karvon_binary().expect("binary"))
        .arg("serve")
        .env("KARVON_DATABASE_URL", &db.url)
        .env("KARVON_LISTEN", format!("127.0.0.1:{port}"))
        .env("KARVON_DB_MAX_CONNECTIONS", "8")
        .env("KARVON_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("karvon starts");
    let address = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = reqwest::Client::new();
    loop {
        if let Ok(response) = client.get(format!("{address}/ready")).send().await {
            if response.status() == StatusCode::OK {
                break;
            }
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = db.db().await.expect("store");
    let token = admin_key(&store, "default").await.expect("key");
    store.close().await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    Server {
        child,
        address,
        client,
    }
}

async fn kill_9_during_keyed_load_then_retrying_unacknowledged_commands_applies_each_once(
    backend: Backend,
) {
    const COMMANDS: usize = 600;
    let db = TestDb::create_on(backend).await.expect("db");
    let mut server = start_server(&db).await;
    let client = server.client.clone();
    let response = client
        .post(format!("{}/api/v1/products", server.address))
        .json(&product("P1", "dairy", None))
        .send()
        .await
        .expect("product");
    assert_eq!(response.status(), StatusCode::CREATED);

    // Eight clients send keyed receipts of 1 unit each; the server is
    // killed with SIGKILL part-way through.
    let acknowledged = Arc::new(Mutex::new(vec![false; COMMANDS]));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (client, address, acknowledged, next) = (
            client.clone(),
            server.address.clone(),
            acknowledged.clone(),
            next.clone(),
        );
        clients.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if index >= COMMANDS {
                    break;
                }
                let body = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "1"});
                let sent = client
                    .post(format!("{address}/api/v1/stock/receipts"))
                    .header("Idempotency-Key", format!("load-{index}"))
                    .json(&body)
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status() == StatusCode::CREATED => {
                        acknowledged.lock().await[index] = true
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }));
    }
    loop {
        let done = acknowledged.lock().await.iter().filter(|ack| **ack).count();
        if done >= COMMANDS / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("reaped");
    for handle in clients {
        let _ = handle.await;
    }
    let acked = acknowledged.lock().await.iter().filter(|ack| **ack).count();
    assert!(acked < COMMANDS, "the kill came too late to test anything");

    // Restart and retry everything the clients did not see acknowledged,
    // plus a few that were acknowledged (they must replay, not re-apply).
    let mut server = start_server(&db).await;
    let flags = acknowledged.lock().await.clone();
    let mut replayed = 0;
    for (index, acked) in flags.iter().enumerate() {
        if *acked && index % 50 != 0 {
            continue;
        }
        let body = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "1"});
        let response = client
            .post(format!("{}/api/v1/stock/receipts", server.address))
            .header("Idempotency-Key", format!("load-{index}"))
            .json(&body)
            .send()
            .await
            .expect("retry");
        assert_eq!(response.status(), StatusCode::CREATED);
        if response.headers().contains_key("idempotent-replayed") {
            replayed += 1;
        }
    }
    assert!(replayed >= flags.iter().step_by(50).filter(|ack| **ack).count());

    let store = db.db().await.expect("store");
    let counts = fetch_strings(
        &store,
        "SELECT CAST(count(*) AS TEXT) FROM events WHERE event_type = 'StockReceived'
         UNION ALL SELECT CAST(count(*) AS TEXT) FROM command_log",
    )
    .await
    .expect("count");
    let expected = COMMANDS.to_string();
    assert_eq!(
        counts,
        [expected.as_str(), expected.as_str()],
        "every command applied exactly once, every key logged once"
    );
    wait_caught_up(&store, &[names::STOCK], Duration::from_secs(20))
        .await
        .expect("caught up");
    let (levels, movements) = projected_stock(&store).await.expect("levels");
    let key = ("default".to_string(), "W1".to_string(), "P1".to_string());
    assert_eq!(levels[&key].0, expected, "the projection counted each once");
    assert_eq!(movements, COMMANDS as i64);
    server.child.kill().expect("stop");
    server.child.wait().expect("reaped");
    store.close().await;
}

async fn sigterm_stops_the_server_cleanly(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut server = start_server(&db).await;
    let response = server
        .client
        .post(format!("{}/api/v1/products", server.address))
        .json(&product("P1", "dairy", None))
        .send()
        .await
        .expect("product");
    assert_eq!(response.status(), StatusCode::CREATED);
    let answer: serde_json::Value = response.json().await.expect("json");
    let position = answer["data"]["position"]
        .as_str()
        .expect("position")
        .to_string();
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "server ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    // Nothing is lost across a graceful stop: after a restart the read
    // model reaches the command's position.
    let server = start_server(&db).await;
    let response = server
        .client
        .get(format!("{}/api/v1/products/P1", server.address))
        .header("X-Min-Position", position)
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), StatusCode::OK);
    stop_server(server);
}

fn stop_server(mut server: Server) {
    let _ = server.child.kill();
    let _ = server.child.wait();
}

/// A keyed command that changes nothing (discontinuing a discontinued
/// product) still takes its key: a retry answers the same, another body
/// under the key is refused.
async fn a_key_whose_command_changed_nothing_is_still_taken(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    app.post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    let path = "/api/v1/products/P1/discontinue";
    let (status, _) = app.post(path, &json!({"reason": "first"})).await;
    assert_eq!(status, StatusCode::OK);
    let events = event_count(&app.db).await.expect("count");

    let (status, first) = app
        .post_keyed(path, "again-1", &json!({"reason": "again"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(event_count(&app.db).await.expect("count"), events);
    let (status, retried) = app
        .post_keyed(path, "again-1", &json!({"reason": "again"}))
        .await;
    assert_eq!((status, &retried["data"]), (StatusCode::OK, &first["data"]));
    let (status, body) = app
        .post_keyed(path, "again-1", &json!({"reason": "something else"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"], "idempotency_key_reused");
    app.stop().await.expect("stop");
}

/// Events never default their tenant: the store refuses an append without
/// one, whoever writes it.
async fn an_event_without_a_tenant_is_refused_at_append(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let store = db.db().await.expect("store");
    store.migrate().await.expect("migrate");
    let insert = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                  VALUES ('Product', 'x/P1', 1, 'ProductDiscontinued', '1', '{}', '{\"source\": \"system\"}')";
    let refused = karvon_tests::execute(&store, insert).await;
    let error = refused.expect_err("an event without tenant_id was stored");
    assert!(error.to_string().contains("tenant_id"), "{error}");
    assert_eq!(event_count(&store).await.expect("count"), 0);
}

/// The whole-system load that stored receipts twice on SQLite: every
/// worker on, 8 clients sending receipts (no `Idempotency-Key`) and 3-line
/// sales over 8 products, with reads in between. Every request answered
/// 201 is stored exactly once: one event per receipt answer id, one sale
/// per sale, and the stock read model equals a replay.
async fn under_mixed_load_each_answered_command_is_stored_once(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    for n in 0..8 {
        let (status, body) = app
            .post(
                "/api/v1/products",
                &product(&format!("P{n}"), "dairy", Some("5")),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut clients = Vec::new();
    for client in 0..8usize {
        let (http, base) = (app.client.clone(), app.address.clone());
        clients.push(tokio::spawn(async move {
            let (mut receipts, mut sales) = (Vec::new(), 0usize);
            let mut n = 0usize;
            while Instant::now() < deadline {
                n += 1;
                let product = format!("P{}", (client + n) % 8);
                let lines: Vec<serde_json::Value> = (0..3)
                    .map(|line| {
                        json!({"product_id": format!("P{}", (client + n + line) % 8),
                               "qty": "1", "unit_price": "1000"})
                    })
                    .collect();
                let request = match n % 4 {
                    0 => http.post(format!("{base}/api/v1/sales")).json(&json!({
                        "sale_id": format!("S{client}-{n}"), "branch_id": "W1",
                        "cashier": "dilnoza", "sale_type": "retail", "payment_type": "cash",
                        "occurred_at": chrono::Utc::now().to_rfc3339(), "lines": lines})),
                    1 => http.get(format!("{base}/api/integrations/inventory-levels")),
                    _ => http
                        .post(format!("{base}/api/v1/stock/receipts"))
                        .json(&json!({"warehouse_id": "W1", "product_id": product, "qty": "3"})),
                };
                let response = request.send().await.expect("send");
                let status = response.status();
                let body: serde_json::Value = response.json().await.expect("json");
                match n % 4 {
                    0 => {
                        assert_eq!(status, StatusCode::CREATED, "{body}");
                        sales += 1;
                    }
                    1 => assert_eq!(status, StatusCode::OK, "{body}"),
                    _ => {
                        assert_eq!(status, StatusCode::CREATED, "{body}");
                        receipts.push(body["data"]["id"].as_str().expect("id").to_string());
                    }
                }
            }
            (receipts, sales)
        }));
    }
    let (mut receipts, mut sales) = (Vec::new(), 0usize);
    for client in clients {
        let (mine, sold) = client.await.expect("client");
        receipts.extend(mine);
        sales += sold;
    }
    let response_id = match backend {
        Backend::Postgres => "metadata ->> 'response_id'",
        Backend::Sqlite => "json_extract(metadata, '$.response_id')",
    };
    let stored = fetch_strings(
        &app.db,
        &format!(
            "SELECT {response_id} FROM events
              WHERE aggregate_type = 'StockItem' AND event_type = 'StockReceived'"
        ),
    )
    .await
    .expect("receipts");
    let mut stored_sorted = stored.clone();
    stored_sorted.sort();
    receipts.sort();
    assert_eq!(
        stored.len(),
        receipts.len(),
        "receipt events = answered receipts"
    );
    assert_eq!(stored_sorted, receipts, "each answered receipt stored once");
    let sale_events = fetch_strings(
        &app.db,
        "SELECT CAST(count(*) AS TEXT) FROM events WHERE aggregate_type = 'Sale'",
    )
    .await
    .expect("sales");
    assert_eq!(
        sale_events[0],
        sales.to_string(),
        "sale events = answered sales"
    );
    // The sales' stock issues first (a reactor), then the stock read model.
    wait_caught_up(&app.db, &[names::SALES_STOCK], Duration::from_secs(60))
        .await
        .expect("sales stock catches up");
    wait_caught_up(&app.db, &[names::STOCK], Duration::from_secs(60))
        .await
        .expect("stock catches up");
    let (projected, _) = projected_stock(&app.db).await.expect("projected");
    let (replayed, _) = karvon_tests::replayed_stock(&app.db)
        .await
        .expect("replayed");
    assert_eq!(projected, replayed, "the stock read model equals a replay");
    app.stop().await.expect("stop");
}

on_both_backends!(
    under_mixed_load_each_answered_command_is_stored_once,
    a_key_whose_command_changed_nothing_is_still_taken,
    an_event_without_a_tenant_is_refused_at_append,
    the_same_key_twice_appends_once_and_answers_identically,
    kill_9_during_keyed_load_then_retrying_unacknowledged_commands_applies_each_once,
    sigterm_stops_the_server_cleanly,
);
