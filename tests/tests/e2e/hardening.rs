//! Security findings, each tried from outside as an attacker would: shared
//! machinery steered by a tenant, overflowing amounts, position tokens that
//! cross tenants, weak secrets, usernames moved between tenants, unbounded
//! pages, request ids used for log injection, a world-readable store.

use std::time::{Duration, Instant};

use karvon_adapters::auth_store;
use karvon_tests::{
    Backend, TestApp, TestDb, authorized_client, event_count, product, spawn_app, spawn_app_with,
    test_config,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn key(app: &TestApp, tenant: &str, scopes: &[&str]) -> String {
    let scopes = scopes.iter().map(|scope| scope.to_string()).collect();
    karvon_app::auth::create_api_key(&app.db, tenant, scopes, Some(100_000), None, None)
        .await
        .expect("key")
        .key
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("sent");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn a_tenant_admin_cannot_steer_the_shared_consumers(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let admin = authorized_client(&key(&app, "default", &["admin"]).await).expect("client");
    for (method, path) in [
        ("GET", "/api/v1/admin/projections"),
        ("POST", "/api/v1/admin/projections/stock/rebuild"),
        ("POST", "/api/v1/admin/projections/stock/retry"),
        ("POST", "/api/v1/admin/projections/stock/skip"),
        ("GET", "/api/v1/admin/projections/stock/skipped"),
    ] {
        let request = match method {
            "GET" => admin.get(app.url(path)),
            _ => admin.post(app.url(path)).json(&json!({})),
        };
        let (status, body) = send(request).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::FORBIDDEN, &json!("forbidden")),
            "{method} {path}: {body}"
        );
    }
    // An admin cannot hand out the scope either, alone or with others.
    for scopes in [json!(["operator"]), json!(["read", "operator"])] {
        let (status, body) = send(
            admin
                .post(app.url("/api/v1/api-keys"))
                .json(&json!({"scopes": scopes})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    // A key made by the CLI with `operator` can.
    let operator = authorized_client(&key(&app, "default", &["operator"]).await).expect("client");
    let (status, body) = send(operator.get(app.url("/api/v1/admin/projections"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Operator alone is not a tenant admin.
    let (status, _) = send(operator.get(app.url("/api/v1/api-keys"))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    app.stop().await.expect("stop");
}

async fn quantities_beyond_ten_to_the_fifteen_are_refused_with_400(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    app.post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    let before = event_count(&app.db).await.expect("count");
    for qty in [
        json!("1000000000000000.5"),
        json!("79228162514264337593543950335"),
        json!(1e20),
    ] {
        let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": qty});
        let (status, body) = app.post("/api/v1/stock/receipts", &receipt).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{qty}: {body}");
        assert_eq!(body["error"], "validation_error");
    }
    let (status, body) = app
        .post(
            "/api/v1/products",
            &json!({"product_id": "P2", "sku": "S", "name": "N", "category": "c", "unit": "pcs",
                    "price": "10000000000000000"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(event_count(&app.db).await.expect("count"), before);
    // The largest allowed amount still works.
    let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "1000000000000000"});
    let (status, body) = app.post("/api/v1/stock/receipts", &receipt).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.stop().await.expect("stop");
}

async fn another_tenants_or_a_made_up_position_is_refused_at_once(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    config.min_position_wait_ms = 5_000;
    let app = karvon_tests::spawn_app_with(config, karvon_app::Role::All)
        .await
        .expect("app");
    auth_store::create_tenant(&app.db, "acme", "UTC")
        .await
        .expect("tenant");
    let acme = authorized_client(&key(&app, "acme", &["read"]).await).expect("client");
    let (_, registered) = app
        .post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    let theirs = registered["data"]["position"]
        .as_str()
        .expect("position")
        .to_string();
    let feed_position = "0.999999999";
    for token in [
        theirs.as_str(),
        feed_position,
        "s:Product:1:acmeX/P1",
        "nonsense",
    ] {
        let started = std::time::Instant::now();
        let (status, body) = send(
            acme.get(app.url("/api/v1/products"))
                .header("X-Min-Position", token),
        )
        .await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("validation_error")),
            "{token}: {body}"
        );
        // Not a wait that timed out (that would take the 5 s bound).
        assert!(started.elapsed() < Duration::from_secs(4), "{token}");
    }
    // The owner's own token still waits and answers.
    let (status, body) = app
        .get_after("/api/v1/products/P1", &registered["data"]["position"])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.stop().await.expect("stop");
}

async fn movement_history_pages_like_every_list(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    app.post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    karvon_tests::append_raw_receipts(&app.db, "W1", 150, 1)
        .await
        .expect("append");
    karvon_tests::wait_caught_up(&app.db, &["stock"], Duration::from_secs(30))
        .await
        .expect("caught up");
    let (status, body) = app
        .get("/api/integrations/product-movement-history?product_id=P0")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["items"].as_array().map(Vec::len), Some(100));
    assert!(body["data"]["next_cursor"].is_string(), "{body}");
    app.stop().await.expect("stop");
}

async fn an_unusable_request_id_is_replaced_not_stored(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let injected = format!("evil\tline{}", "x".repeat(100));
    for (sent, kept) in [(injected.as_str(), false), ("req-42.a:b", true)] {
        let response = app
            .client
            .post(app.url("/api/v1/products"))
            .header("X-Request-Id", sent)
            .json(&product(&format!("P{}", sent.len()), "dairy", None))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), StatusCode::CREATED);
        let echoed = response
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(echoed == sent, kept, "{echoed}");
        assert!(!echoed.is_empty());
    }
    let stored = karvon_tests::fetch_strings(
        &app.db,
        match backend {
            Backend::Postgres => "SELECT metadata ->> 'correlation_id' FROM events",
            Backend::Sqlite => "SELECT json_extract(metadata, '$.correlation_id') FROM events",
        },
    )
    .await
    .expect("metadata");
    assert!(stored.iter().all(|id| !id.contains("evil")), "{stored:?}");
    assert!(stored.iter().any(|id| id == "req-42.a:b"), "{stored:?}");
    app.stop().await.expect("stop");
}

on_both_backends!(
    a_tenant_admin_cannot_steer_the_shared_consumers,
    quantities_beyond_ten_to_the_fifteen_are_refused_with_400,
    another_tenants_or_a_made_up_position_is_refused_at_once,
    movement_history_pages_like_every_list,
    an_unusable_request_id_is_replaced_not_stored,
);

#[tokio::test]
async fn a_short_jwt_secret_is_refused_at_start() {
    let db = TestDb::create_on(Backend::Sqlite).await.expect("db");
    let mut config = test_config(&db);
    config.jwt_secret = Some("too-short-secret".to_string());
    let refused = karvon_app::Application::build(config, karvon_app::Role::All).await;
    let error = refused.err().expect("a 16-byte secret was accepted");
    assert!(
        format!("{error:#}").contains("KARVON_JWT_SECRET must be at least 32 bytes"),
        "{error:#}"
    );
}

#[tokio::test]
async fn a_username_is_never_moved_to_another_tenant() {
    let db = TestDb::create().await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    auth_store::create_tenant(&app.db, "acme", "UTC")
        .await
        .expect("tenant");
    karvon_app::auth::create_user(
        &app.db,
        "default",
        "aziz",
        "first-password",
        vec!["read".into()],
    )
    .await
    .expect("user");
    let moved = karvon_app::auth::create_user(
        &app.db,
        "acme",
        "aziz",
        "second-password",
        vec!["admin".into()],
    )
    .await;
    assert!(
        moved
            .as_ref()
            .is_err_and(|error| error.to_string().contains("taken by another tenant")),
        "{moved:?}"
    );
    let login = |password: &str| {
        app.client
            .post(app.url("/api/auth/login"))
            .json(&json!({"username": "aziz", "password": password}))
    };
    assert_eq!(send(login("first-password")).await.0, StatusCode::OK);
    assert_eq!(
        send(login("second-password")).await.0,
        StatusCode::UNAUTHORIZED
    );
    app.stop().await.expect("stop");
}

#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("karvon-private-{}", uuid::Uuid::new_v4()));
    let file = dir.join("data").join("karvon.db");
    let db = karvon_adapters::db::Db::open(&format!("sqlite://{}", file.display()), 2)
        .await
        .expect("open");
    db.migrate().await.expect("migrate");
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .map(|meta| meta.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    let (file_mode, dir_mode) = (mode(&file), mode(file.parent().expect("parent")));
    db.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((file_mode, dir_mode), (0o600, 0o700));
}

/// Resident memory of process `pid` now, in bytes.
fn rss(pid: u32) -> u64 {
    karvon_tests::process_memory(pid, "VmRSS")
}

async fn metrics_text(server: &karvon_tests::KarvonProcess) -> String {
    reqwest::get(format!("{}/metrics", server.address))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Sends `count` requests with invented methods on one keep-alive
/// connection; answers how many were 405.
async fn invented_methods(address: &str, from: usize, count: usize) -> usize {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let mut stream = BufReader::new(stream);
    let mut refused = 0;
    for n in from..from + count {
        stream
            .get_mut()
            .write_all(format!("ZZTOP{n} / HTTP/1.1\r\nHost: karvon\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut status = String::new();
        stream.read_line(&mut status).await.expect("status line");
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.expect("header");
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().expect("length");
                }
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.expect("body");
        if status.starts_with("HTTP/1.1 405") {
            refused += 1;
        }
    }
    refused
}

/// The review's flood: 20,000 requests, each with a method of its own.
/// Each is answered 405 before any metric is kept, so `/metrics` and the
/// process's memory stay where they were (it grew 32 → 190 MB, and
/// `/metrics` to 22 MB, never freed).
async fn invented_methods_leave_metrics_and_memory_where_they_were(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let server = karvon_tests::KarvonProcess::start(&db, &[]).await;
    let address = server.address.trim_start_matches("http://").to_string();
    // Warm up the label sets every later scrape has anyway.
    let _ = metrics_text(&server).await;
    let before = metrics_text(&server).await;
    let rss_before = rss(server.child.id());
    let mut senders = Vec::new();
    for part in 0..4 {
        let address = address.clone();
        senders.push(tokio::spawn(async move {
            invented_methods(&address, part * 5_000, 5_000).await
        }));
    }
    let mut refused = 0;
    for sender in senders {
        refused += sender.await.expect("sender");
    }
    assert_eq!(refused, 20_000, "every invented method answered 405");
    let after = metrics_text(&server).await;
    let rss_after = rss(server.child.id());
    println!(
        "20,000 invented methods: /metrics {} -> {} bytes, RSS {} -> {} MB",
        before.len(),
        after.len(),
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        !after.contains("ZZTOP"),
        "an invented method became a label"
    );
    assert!(
        after.len() < before.len() + 4_096,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
    assert!(
        rss_after < rss_before + (64 << 20),
        "RSS grew from {} to {} MB",
        rss_before >> 20,
        rss_after >> 20
    );
}

async fn open_stream(app: &TestApp, token: &str) -> reqwest::Response {
    // A client of its own per stream: each holds its connection.
    authorized_client(token)
        .expect("client")
        .get(app.url("/api/v1/stream"))
        .send()
        .await
        .expect("stream")
}

/// Answers within 2 s (or fails the test).
async fn promptly(request: reqwest::RequestBuilder) -> StatusCode {
    tokio::time::timeout(Duration::from_secs(2), request.send())
        .await
        .expect("answered within 2 s")
        .expect("answer")
        .status()
}

/// Event streams are bounded per key (4), per tenant (16) and together
/// to half of the connection limit, so `/health` and ordinary requests
/// are served however many streams are held open.
async fn streams_are_capped_and_everything_else_still_served(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    config.max_connections = 24;
    let app = spawn_app_with(config, karvon_app::Role::Api)
        .await
        .expect("app");
    let reader = key(&app, "default", &["read"]).await;
    let mut held = Vec::new();
    for n in 1..=4 {
        let stream = open_stream(&app, &reader).await;
        assert_eq!(stream.status(), StatusCode::OK, "stream {n}");
        held.push(stream);
    }
    let fifth = open_stream(&app, &reader).await;
    assert_eq!(fifth.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(fifth.headers().contains_key("retry-after"));
    drop(fifth);
    let plain = reqwest::Client::new();
    assert_eq!(
        promptly(plain.get(app.url("/health"))).await,
        StatusCode::OK
    );
    let other = authorized_client(&key(&app, "default", &["read"]).await).expect("client");
    assert_eq!(
        promptly(other.get(app.url("/api/v1/products"))).await,
        StatusCode::OK
    );
    // Two more keys fill the streams' half of the 24 connections.
    for _ in 0..2 {
        let token = key(&app, "default", &["read"]).await;
        for _ in 0..4 {
            let stream = open_stream(&app, &token).await;
            assert_eq!(stream.status(), StatusCode::OK);
            held.push(stream);
        }
    }
    auth_store::create_tenant(&app.db, "other", "UTC")
        .await
        .expect("tenant");
    let outsider = key(&app, "other", &["read"]).await;
    let refused = open_stream(&app, &outsider).await;
    assert_eq!(
        refused.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "past half of the connections"
    );
    drop(refused);
    assert_eq!(
        promptly(plain.get(app.url("/health"))).await,
        StatusCode::OK
    );
    assert_eq!(promptly(plain.get(app.url("/ready"))).await, StatusCode::OK);
    assert_eq!(
        promptly(other.get(app.url("/api/v1/products"))).await,
        StatusCode::OK
    );
    // A stream that closes gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stream = open_stream(&app, &outsider).await;
        if stream.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stopping ends the streams still open (else the graceful shutdown
    // waited out their lifetime).
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("stopped with streams open")
        .expect("stop");
}

async fn a_tenant_holds_at_most_sixteen_streams_and_each_ends(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    config.max_connections = 100;
    config.stream_lifetime_secs = 2;
    let app = spawn_app_with(config, karvon_app::Role::Api)
        .await
        .expect("app");
    let mut held = Vec::new();
    for _ in 0..4 {
        let token = key(&app, "default", &["read"]).await;
        for _ in 0..4 {
            let stream = open_stream(&app, &token).await;
            assert_eq!(stream.status(), StatusCode::OK);
            held.push(stream);
        }
    }
    let seventeenth = open_stream(&app, &key(&app, "default", &["read"]).await).await;
    assert_eq!(seventeenth.status(), StatusCode::TOO_MANY_REQUESTS);
    // Each ends after its lifetime (the client resumes with Last-Event-ID).
    let mut first = held.remove(0);
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while first.chunk().await.expect("chunk").is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived its lifetime");
    app.stop().await.expect("stop");
}

on_both_backends!(
    invented_methods_leave_metrics_and_memory_where_they_were,
    streams_are_capped_and_everything_else_still_served,
    a_tenant_holds_at_most_sixteen_streams_and_each_ends,
);
