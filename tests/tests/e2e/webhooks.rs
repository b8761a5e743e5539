//! The integration registry and inbound third-party webhooks: secrets
//! sealed and never answered, Standard Webhooks signatures over the raw
//! body, replayed webhook ids acknowledged once, forgeries writing nothing.

use std::time::Duration;

use karvon_adapters::auth_store;
use karvon_adapters::integrations::{sign, signing_key};
use karvon_tests::{
    Backend, Db, TestApp, TestDb, authorized_client, event_count, product, spawn_app_with,
    test_config, wait_caught_up,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SECRET_OLD: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_NEW: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const FORGED: &str = "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcY";

async fn start(backend: Backend) -> (TestDb, TestApp) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    if backend == Backend::Postgres {
        // SQLite makes its own key file beside the database.
        config.secrets_key = Some("11".repeat(32));
    }
    let app = spawn_app_with(config, karvon_app::Role::All)
        .await
        .expect("app");
    (db, app)
}

async fn webhook_source(app: &TestApp) -> String {
    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": "webhook_source", "name": "shop",
                    "secrets": {"signing_secrets": [SECRET_OLD, SECRET_NEW]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["data"]["id"].as_str().expect("id").to_string()
}

/// Sends `body` signed with `secret` as `webhook_id`, `age` seconds old.
async fn deliver(
    app: &TestApp,
    integration: &str,
    webhook_id: &str,
    secret: &str,
    age: i64,
    body: &str,
) -> (StatusCode, Value) {
    let timestamp = (chrono::Utc::now().timestamp() - age).to_string();
    let signature = sign(
        &signing_key(secret).expect("key"),
        webhook_id,
        &timestamp,
        body.as_bytes(),
    );
    send(
        app,
        integration,
        &[
            ("webhook-id", webhook_id),
            ("webhook-timestamp", &timestamp),
            ("webhook-signature", &format!("v1,bm90IGl0 {signature}")),
        ],
        body,
        None,
    )
    .await
}

async fn send(
    app: &TestApp,
    integration: &str,
    headers: &[(&str, &str)],
    body: &str,
    bearer: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(app.url(&format!(
            "/api/integrations/webhook?integration={integration}"
        )))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    app.send(request).await
}

async fn sealed_secrets_text(db: &Db) -> String {
    const SELECT: &str = "SELECT CAST(secrets AS TEXT) FROM integrations";
    let rows: Vec<String> = match db {
        Db::Postgres(pool) => sqlx::query_scalar(SELECT).fetch_all(pool).await,
        Db::Sqlite(sqlite) => sqlx::query_scalar(SELECT).fetch_all(&sqlite.writer).await,
    }
    .expect("secrets");
    rows.join("\n")
}

async fn last_event_metadata(db: &Db) -> Value {
    const SELECT: &str =
        "SELECT CAST(metadata AS TEXT) FROM events ORDER BY global_position DESC LIMIT 1";
    let text: String = match db {
        Db::Postgres(pool) => sqlx::query_scalar(SELECT).fetch_one(pool).await,
        Db::Sqlite(sqlite) => sqlx::query_scalar(SELECT).fetch_one(&sqlite.writer).await,
    }
    .expect("metadata");
    serde_json::from_str(&text).expect("json")
}

async fn registry_keeps_secrets_and_tenants_apart(backend: Backend) {
    let (_db, app) = start(backend).await;
    let webhook = webhook_source(&app).await;
    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": "1c_soap", "name": "1C head office",
                    "settings": {"url": "http://1c.local/ws", "namespace": "urn:trade"},
                    "secrets": {"username": "karvon", "password": "p4ss-w0rd-1c"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let soap = body["data"]["id"].as_str().expect("id").to_string();

    let (status, body) = app.get("/api/v1/integrations").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items = body["data"]["items"].as_array().expect("items");
    assert_eq!(items.len(), 2, "{body}");
    assert_eq!(items[0]["id"], json!(webhook));
    assert_eq!(items[0]["secret_names"], json!(["signing_secrets"]));
    assert_eq!(items[1]["id"], json!(soap));
    assert_eq!(items[1]["kind"], "1c_soap");
    assert_eq!(items[1]["settings"]["products_operation"], "GetProductList");
    assert_eq!(items[1]["settings"]["chunk_size"], 100);
    assert_eq!(items[1]["secret_names"], json!(["password", "username"]));
    let text = body.to_string();
    assert!(
        !text.contains("p4ss-w0rd-1c") && !text.contains("whsec_"),
        "{text}"
    );
    // Sealed at rest too.
    let stored = sealed_secrets_text(&app.db).await;
    assert!(
        !stored.contains("p4ss-w0rd-1c") && !stored.contains("MfKQ9r8"),
        "{stored}"
    );

    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": "ftp", "name": "x", "settings": {}, "secrets": {}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["message"].as_str().expect("message").contains("ftp"));
    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": "regos", "name": "REGOS",
                    "settings": {"base_url": "https://integration.regos.uz", "sync_time": "03:00"},
                    "secrets": {"integration_key": "k"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("settings.connected_integration_id"),
        "{body}"
    );

    // Another tenant sees nothing, and cannot use the first one's webhook.
    auth_store::create_tenant(&app.db, "other", "UTC")
        .await
        .expect("tenant");
    let other = karvon_tests::admin_key(&app.db, "other")
        .await
        .expect("key");
    let client = authorized_client(&other).expect("client");
    let (status, body) = app.send(client.get(app.url("/api/v1/integrations"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["items"], json!([]));
    let event = json!({"event_type": "product_created", "payload": product("X1", "dairy", None)});
    let (status, body) = send(&app, &webhook, &[], &event.to_string(), Some(&other)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

async fn signed_webhooks_apply_once_and_forgeries_write_nothing(backend: Backend) {
    let (_db, app) = start(backend).await;
    let integration = webhook_source(&app).await;
    let db = &app.db;

    // A product, signed with the newer of two secrets (rotation).
    let created = json!({"event_type": "product_created", "payload": product("P1", "dairy", None)})
        .to_string();
    let before = event_count(db).await.expect("count");
    let (status, body) = deliver(&app, &integration, "msg_1", SECRET_NEW, 0, &created).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["id"], "P1");
    assert_eq!(event_count(db).await.expect("count"), before + 1);
    let metadata = last_event_metadata(db).await;
    assert_eq!(metadata["source"], "webhook", "{metadata}");
    assert_eq!(
        metadata["actor"],
        json!(format!("integration:{integration}"))
    );
    let (status, body) = app
        .get_after("/api/v1/products/P1", &body["data"]["position"])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The same webhook id again (a fresh attempt, signed with the old
    // secret): acknowledged, nothing new.
    let (status, body) = deliver(&app, &integration, "msg_1", SECRET_OLD, 0, &created).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["duplicate"], true);
    assert_eq!(event_count(db).await.expect("count"), before + 1);

    // An order becomes a sale; a stock update an adjustment.
    let order = json!({"event_type": "order_created", "payload": {
        "sale_id": "W-1", "branch_id": "B1", "cashier": "web", "sale_type": "retail",
        "payment_type": "card", "occurred_at": "2026-11-25T10:00:00+05:00",
        "lines": [{"product_id": "P1", "qty": "2", "unit_price": "1500"}]}})
    .to_string();
    let (status, body) = deliver(&app, &integration, "msg_2", SECRET_OLD, 0, &order).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["id"], "W-1");
    let stock = json!({"event_type": "stock_updated", "payload":
        {"warehouse_id": "W1", "product_id": "P1", "counted_qty": "7"}})
    .to_string();
    let (status, body) = deliver(&app, &integration, "msg_3", SECRET_NEW, 0, &stock).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The sale's stock line follows through the reactor, and the stock
    // checks of the alert rules follow it; let both land (in that order)
    // before counting, or a late alert event looks like a forged write.
    for reactor in ["sales_stock", "alert_rules"] {
        wait_caught_up(db, &[reactor], Duration::from_secs(30))
            .await
            .expect("caught up");
    }
    let after_good = event_count(db).await.expect("count");
    assert!(after_good >= before + 3);

    // Forgeries and invalid payloads: nothing recorded.
    let fresh = json!({"event_type": "product_created", "payload": product("P9", "dairy", None)})
        .to_string();
    let (status, body) = deliver(&app, &integration, "msg_f1", FORGED, 0, &fresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "wrong secret: {body}");
    // One byte of the body changed after signing.
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let signature = sign(
        &signing_key(SECRET_NEW).expect("key"),
        "msg_f2",
        &timestamp,
        fresh.as_bytes(),
    );
    let changed = fresh.replace("P9", "P8");
    let (status, body) = send(
        &app,
        &integration,
        &[
            ("webhook-id", "msg_f2"),
            ("webhook-timestamp", &timestamp),
            ("webhook-signature", &signature),
        ],
        &changed,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "changed body: {body}");
    let (status, body) = deliver(&app, &integration, "msg_f3", SECRET_NEW, 600, &fresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "10 min old: {body}");
    let (status, body) = deliver(&app, &integration, "msg_f4", SECRET_NEW, -600, &fresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "10 min ahead: {body}");
    let (status, body) = send(&app, &integration, &[], &fresh, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "unsigned: {body}");
    // Validly signed but not a product (the third-party fixture's shape).
    let fixture =
        r#"{"event_type":"product_created","payload":{"product_id":123,"name":"New Product"}}"#;
    let (status, body) = deliver(&app, &integration, "msg_f5", SECRET_NEW, 0, fixture).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = deliver(
        &app,
        &integration,
        "msg_f6",
        SECRET_NEW,
        0,
        r#"{"event_type":"price_changed","payload":{}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(event_count(db).await.expect("count"), after_good);
    // A refused delivery is not remembered: the same id, now valid, applies.
    let (status, body) = deliver(&app, &integration, "msg_f1", SECRET_NEW, 0, &fresh).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(event_count(db).await.expect("count"), after_good + 1);

    // Unknown integration, or another kind: 404.
    let (status, _) = deliver(
        &app,
        &uuid::Uuid::now_v7().to_string(),
        "msg_x",
        SECRET_NEW,
        0,
        &fresh,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": "1c_odata", "name": "1C OData",
                    "settings": {"base_url": "http://1c.local/odata"},
                    "secrets": {"username": "u", "password": "p"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let odata = body["data"]["id"].as_str().expect("id").to_string();
    let (status, _) = deliver(&app, &odata, "msg_y", SECRET_NEW, 0, &fresh).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A Bearer key with scope `webhooks` of the tenant works unsigned; one
    // with only `read` does not.
    let key = |scopes: &[&str]| {
        let db = db.clone();
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        async move {
            karvon_app::auth::create_api_key(&db, "default", scopes, Some(1000), None, None)
                .await
                .expect("key")
                .key
        }
    };
    let webhooks_key = key(&["webhooks"]).await;
    let read_key = key(&["read"]).await;
    let bearer_event =
        json!({"event_type": "product_created", "payload": product("P7", "dairy", None)})
            .to_string();
    let (status, body) = send(&app, &integration, &[], &bearer_event, Some(&read_key)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = send(
        &app,
        &integration,
        &[("webhook-id", "bearer_1")],
        &bearer_event,
        Some(&webhooks_key),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = send(
        &app,
        &integration,
        &[("webhook-id", "bearer_1")],
        &bearer_event,
        Some(&webhooks_key),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(event_count(db).await.expect("count"), after_good + 2);
}

/// PostgreSQL without `KARVON_SECRETS_KEY` refuses to store secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_without_a_secrets_key_refuses_secrets() {
    let db = TestDb::create_on(Backend::Postgres).await.expect("db");
    let app = spawn_app_with(test_config(&db), karvon_app::Role::All)
        .await
        .expect("app");
    let (status, body) = app
        .post(
            "/api/v1/integrations",
            &json!({"kind": "webhook_source", "name": "shop",
                    "secrets": {"signing_secrets": [SECRET_OLD]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("KARVON_SECRETS_KEY")
    );
    assert_eq!(sealed_secrets_text(&app.db).await, "");
}

/// A `webhook_source` with an `ip_allowlist` takes deliveries only from
/// the connection addresses it lists (the tests connect from 127.0.0.1):
/// any other sender is answered 403 and nothing is written, however well
/// signed or keyed. Entries that are not addresses or ranges are refused
/// at registration.
async fn ip_allowlists_refuse_other_senders(backend: Backend) {
    let (_db, app) = start(backend).await;
    let db = &app.db;
    let register = |allowlist: Value| {
        let app = &app;
        async move {
            app.post(
                "/api/v1/integrations",
                &json!({"kind": "webhook_source", "name": "shop",
                        "settings": {"ip_allowlist": allowlist},
                        "secrets": {"signing_secrets": [SECRET_NEW]}}),
            )
            .await
        }
    };
    let (status, body) = register(json!(["10.0.0.0/8", "not-an-ip"])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("ip_allowlist"),
        "{body}"
    );

    let id = |body: &Value| body["data"]["id"].as_str().expect("id").to_string();
    let (status, body) = register(json!(["10.0.0.0/8", "192.0.2.7"])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let elsewhere = id(&body);
    let (status, body) = register(json!(["192.0.2.0/24", "127.0.0.0/8"])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let local_range = id(&body);
    let (status, body) = register(json!(["127.0.0.1"])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let local_address = id(&body);
    let (status, body) = register(json!([])).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let anyone = id(&body);

    let event = |product_id: &str| {
        json!({"event_type": "product_created", "payload": product(product_id, "dairy", None)})
            .to_string()
    };
    let before = event_count(db).await.expect("count");
    let (status, body) = deliver(&app, &elsewhere, "ip_1", SECRET_NEW, 0, &event("A1")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"], "forbidden", "{body}");
    // A Bearer key with scope `webhooks` is no way around it.
    let key = karvon_app::auth::create_api_key(
        db,
        "default",
        vec!["webhooks".to_string()],
        Some(1000),
        None,
        None,
    )
    .await
    .expect("key")
    .key;
    let (status, body) = send(
        &app,
        &elsewhere,
        &[("webhook-id", "ip_2")],
        &event("A2"),
        Some(&key),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(event_count(db).await.expect("count"), before);
    assert_eq!(
        deliveries(db).await,
        0,
        "a refused delivery is not remembered"
    );

    // Listed by range, by exact address, or no list at all: applied.
    for (integration, webhook_id, product_id) in [
        (&local_range, "ip_3", "A3"),
        (&local_address, "ip_4", "A4"),
        (&anyone, "ip_5", "A5"),
    ] {
        let (status, body) = deliver(
            &app,
            integration,
            webhook_id,
            SECRET_NEW,
            0,
            &event(product_id),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{integration}: {body}");
    }
    assert_eq!(event_count(db).await.expect("count"), before + 3);
}

async fn deliveries(db: &Db) -> i64 {
    const COUNT: &str = "SELECT count(*) FROM webhook_deliveries";
    match db {
        Db::Postgres(pool) => sqlx::query_scalar(COUNT).fetch_one(pool).await,
        Db::Sqlite(sqlite) => sqlx::query_scalar(COUNT).fetch_one(&sqlite.writer).await,
    }
    .expect("count")
}

/// Applied webhook ids are forgotten after the retention; younger ones stay.
async fn old_webhook_deliveries_are_pruned(backend: Backend) {
    let (_db, app) = start(backend).await;
    let db = &app.db;
    let integration = webhook_source(&app).await;
    for id in ["old_1", "new_1"] {
        let body = json!({"event_type": "product_created", "payload": product(id, "dairy", None)})
            .to_string();
        let (status, answer) = deliver(&app, &integration, id, SECRET_NEW, 0, &body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    // `old_1` was received 31 days ago, in the backend's own time format.
    let aged = match db.backend() {
        Backend::Postgres => {
            "UPDATE webhook_deliveries SET received_at = now() - interval '31 days'
              WHERE webhook_id = 'old_1'"
        }
        Backend::Sqlite => {
            "UPDATE webhook_deliveries
                SET received_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-31 days')
              WHERE webhook_id = 'old_1'"
        }
    };
    assert_eq!(karvon_tests::execute(db, aged).await.expect("aged"), 1);
    let retention = karvon_app::workers::delivery_retention(&karvon_app::Config::default());
    assert_eq!(retention, Duration::from_secs(30 * 24 * 3600));
    let pruned = karvon_adapters::integrations::prune_deliveries(db, retention)
        .await
        .expect("pruned");
    assert_eq!(pruned, 1);
    assert_eq!(deliveries(db).await, 1);
    let kept = karvon_tests::fetch_strings(db, "SELECT webhook_id FROM webhook_deliveries")
        .await
        .expect("kept");
    assert_eq!(kept, ["new_1"]);
    // Pruning again finds nothing; the retention never goes below an hour.
    assert_eq!(
        karvon_adapters::integrations::prune_deliveries(db, retention)
            .await
            .expect("pruned"),
        0
    );
    let config = karvon_app::Config {
        webhook_delivery_retention_hours: 0,
        ..karvon_app::Config::default()
    };
    assert_eq!(
        karvon_app::workers::delivery_retention(&config),
        Duration::from_secs(3600)
    );
}

/// `PUT /api/v1/integrations/{id}` replaces name and settings, and the
/// secrets only when given (never answered); `DELETE` removes the
/// integration, whose webhooks then answer 404. Another tenant's admin gets
/// 404 for both and changes nothing.
async fn integrations_are_replaced_and_removed_within_their_tenant(backend: Backend) {
    let (_db, app) = start(backend).await;
    let integration = webhook_source(&app).await;
    let path = format!("/api/v1/integrations/{integration}");
    let put = |body: Value| {
        let (app, path) = (&app, &path);
        async move { app.send(app.client.put(app.url(path)).json(&body)).await }
    };
    let event = |product_id: &str| {
        json!({"event_type": "product_created", "payload": product(product_id, "dairy", None)})
            .to_string()
    };

    // Settings only: the secrets stay as they were.
    let (status, body) =
        put(json!({"name": "web shop", "settings": {"ip_allowlist": ["127.0.0.1"]}})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["id"], json!(integration));
    assert_eq!(body["data"]["kind"], "webhook_source");
    assert_eq!(body["data"]["name"], "web shop");
    assert_eq!(
        body["data"]["settings"]["ip_allowlist"],
        json!(["127.0.0.1"])
    );
    assert_eq!(body["data"]["secret_names"], json!(["signing_secrets"]));
    let (status, body) = deliver(&app, &integration, "put_1", SECRET_OLD, 0, &event("U1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // New secrets replace the old ones, and are never answered.
    let (status, body) = put(json!({"kind": "webhook_source", "name": "web shop",
                                    "secrets": {"signing_secrets": [FORGED]}}))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.to_string().contains("whsec_"), "{body}");
    assert_eq!(body["data"]["settings"], json!({}), "settings replaced too");
    assert!(!sealed_secrets_text(&app.db).await.contains("AQIDBAUG"));
    let (status, body) = deliver(&app, &integration, "put_2", SECRET_OLD, 0, &event("U2")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "old secret: {body}");
    let (status, body) = deliver(&app, &integration, "put_3", FORGED, 0, &event("U3")).await;
    assert_eq!(status, StatusCode::CREATED, "new secret: {body}");

    // Refused: another kind, an unknown field, bad settings or secrets.
    for body in [
        json!({"kind": "acrel", "name": "x"}),
        json!({"name": "x", "colour": "red"}),
        json!({"name": "x", "settings": {"ip_allowlist": ["nowhere"]}}),
        json!({"name": "x", "secrets": {"signing_secrets": []}}),
        json!({"name": " "}),
    ] {
        let (status, answer) = put(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
    }
    let (status, body) = app.get("/api/v1/integrations").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["items"][0]["name"], "web shop", "unchanged");

    // Another tenant's admin: 404 for the first tenant's integration.
    auth_store::create_tenant(&app.db, "other", "UTC")
        .await
        .expect("tenant");
    let other = authorized_client(
        &karvon_tests::admin_key(&app.db, "other")
            .await
            .expect("key"),
    )
    .expect("client");
    let (status, body) = app
        .send(
            other
                .put(app.url(&path))
                .json(&json!({"name": "taken over"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = app.send(other.delete(app.url(&path))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = app.get("/api/v1/integrations").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["items"][0]["name"], "web shop", "unchanged");
    // Ids that name nothing.
    for missing in [uuid::Uuid::now_v7().to_string(), "not-a-uuid".to_string()] {
        let (status, body) = app
            .send(
                app.client
                    .delete(app.url(&format!("/api/v1/integrations/{missing}"))),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }
    // A key without `admin` may do neither.
    let writer = karvon_app::auth::create_api_key(
        &app.db,
        "default",
        vec!["read".to_string(), "write".to_string()],
        Some(1000),
        None,
        None,
    )
    .await
    .expect("key")
    .key;
    let writer = authorized_client(&writer).expect("client");
    let (status, body) = app.send(writer.delete(app.url(&path))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Removed: gone from the list, its webhooks and remembered ids with it.
    let (status, body) = app.send(app.client.delete(app.url(&path))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["deleted"], true);
    let (status, body) = app.get("/api/v1/integrations").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["items"], json!([]));
    assert_eq!(deliveries(&app.db).await, 0);
    let (status, body) = deliver(&app, &integration, "put_4", FORGED, 0, &event("U4")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = app.send(app.client.delete(app.url(&path))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

/// Behind a proxy listed in `KARVON_TRUSTED_PROXIES` the allow-list and
/// the failed-attempt limit see the client the proxy names; from any other
/// peer a forwarded header is only a claim and changes nothing.
async fn forwarded_addresses_count_only_behind_trusted_proxies(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    if backend == Backend::Postgres {
        config.secrets_key = Some("11".repeat(32));
    }
    let untrusting = spawn_app_with(config.clone(), karvon_app::Role::Api)
        .await
        .expect("app");
    config.trusted_proxies = vec!["127.0.0.1/32".to_string()];
    let behind_proxy = spawn_app_with(config, karvon_app::Role::Api)
        .await
        .expect("app");
    let (status, body) = behind_proxy
        .post(
            "/api/v1/integrations",
            &json!({"kind": "webhook_source", "name": "shop",
                    "settings": {"ip_allowlist": ["203.0.113.7"]},
                    "secrets": {"signing_secrets": [SECRET_NEW]}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let integration = body["data"]["id"].as_str().expect("id").to_string();
    let key = karvon_app::auth::create_api_key(
        &behind_proxy.db,
        "default",
        vec!["webhooks".to_string()],
        Some(1000),
        None,
        None,
    )
    .await
    .expect("key")
    .key;
    let event = |product_id: &str| {
        json!({"event_type": "product_created", "payload": product(product_id, "dairy", None)})
            .to_string()
    };
    let deliver_from = |app: &'static str, client: &'static str, webhook_id: &'static str| {
        let app = if app == "proxy" {
            &behind_proxy
        } else {
            &untrusting
        };
        let (integration, key, body) = (integration.clone(), key.clone(), event(webhook_id));
        async move {
            send(
                app,
                &integration,
                &[("webhook-id", webhook_id), ("x-forwarded-for", client)],
                &body,
                Some(&key),
            )
            .await
        }
    };
    // The listed client, through the trusted proxy: applied.
    let (status, body) = deliver_from("proxy", "198.51.100.9, 203.0.113.7", "fw1").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Another client through it: refused.
    let (status, body) = deliver_from("proxy", "198.51.100.9", "fw2").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // The same claim from a peer that is no trusted proxy: refused.
    let (status, body) = deliver_from("direct", "203.0.113.7", "fw3").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Failed attempts are counted per client behind the proxy: one client
    // over its limit does not make another's bad key a 429.
    // (Each with a key prefix of its own: failures are counted per prefix
    // too.)
    let bad = |client: &'static str, key: &'static str| {
        reqwest::Client::new()
            .get(behind_proxy.url("/api/v1/products"))
            .bearer_auth(key)
            .header("x-forwarded-for", client)
    };
    let mut last = StatusCode::OK;
    for _ in 0..61 {
        last = bad("203.0.113.50", "kv0123456789ab_0000")
            .send()
            .await
            .expect("send")
            .status();
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    let other = bad("203.0.113.51", "kv0123456789ac_0000")
        .send()
        .await
        .expect("send")
        .status();
    assert_eq!(other, StatusCode::UNAUTHORIZED);
    untrusting.stop().await.expect("stop");
    behind_proxy.stop().await.expect("stop");
}

on_both_backends!(
    forwarded_addresses_count_only_behind_trusted_proxies,
    registry_keeps_secrets_and_tenants_apart,
    signed_webhooks_apply_once_and_forgeries_write_nothing,
    ip_allowlists_refuse_other_senders,
    old_webhook_deliveries_are_pruned,
    integrations_are_replaced_and_removed_within_their_tenant,
);
