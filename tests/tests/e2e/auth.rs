//! Credentials, scopes, tenant isolation and rate limits, as an outside
//! client meets them.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use karvon_adapters::auth_store;
use karvon_app::Role;
use karvon_projections::names;
use karvon_tests::{
    Backend, TestApp, TestDb, authorized_client, event_count, execute, fetch_strings,
    karvon_binary, product, spawn_app, spawn_app_with, test_config, wait_caught_up,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

const JWT_SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

async fn key(app: &TestApp, tenant: &str, scopes: &[&str], rate_limit: Option<i32>) -> String {
    let scopes = scopes.iter().map(|scope| scope.to_string()).collect();
    karvon_app::auth::create_api_key(&app.db, tenant, scopes, rate_limit, None, None)
        .await
        .expect("key")
        .key
}

async fn call(request: reqwest::RequestBuilder) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let response = request.send().await.expect("sent");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, headers)
}

fn assert_refused(
    answer: &(StatusCode, Value, reqwest::header::HeaderMap),
    status: StatusCode,
    code: &str,
) {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["success"], false);
    assert_eq!(answer.1["error"], code, "{}", answer.1);
}

async fn missing_wrong_revoked_and_expired_keys_are_refused(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let plain = reqwest::Client::new();
    let url = app.url("/api/integrations/inventory-levels");

    let answer = call(plain.get(&url)).await;
    assert_refused(&answer, StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(
        answer
            .2
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    assert_refused(
        &call(plain.get(&url).bearer_auth("nonsense")).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    let good = key(&app, "default", &["read"], None).await;
    assert_eq!(
        call(plain.get(&url).bearer_auth(&good)).await.0,
        StatusCode::OK
    );
    let (prefix, _) = good.split_once('_').expect("prefix");
    let forged = format!("{prefix}_{}", "0".repeat(64));
    assert_refused(
        &call(plain.get(&url).bearer_auth(&forged)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    // Revoked through the API by an admin of the same tenant.
    let (status, body) = app.get("/api/v1/api-keys").await;
    assert_eq!(status, StatusCode::OK);
    let id = body["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|item| item["prefix"] == prefix)
        .map(|item| item["id"].as_str().unwrap_or_default().to_string())
        .expect("listed");
    assert!(
        body.to_string().find(&good[prefix.len() + 1..]).is_none(),
        "a listing leaked the secret"
    );
    let (status, _) = app
        .post(&format!("/api/v1/api-keys/{id}/revoke"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_refused(
        &call(plain.get(&url).bearer_auth(&good)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    let expiring = key(&app, "default", &["read"], None).await;
    let (prefix, _) = expiring.split_once('_').expect("prefix");
    execute(
        &app.db,
        &format!(
            "UPDATE api_keys SET expires_at = '2000-01-01T00:00:00Z' WHERE prefix = '{prefix}'"
        ),
    )
    .await
    .expect("expire");
    assert_refused(
        &call(plain.get(&url).bearer_auth(&expiring)).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    app.stop().await.expect("stop");
}

async fn scopes_are_enforced_per_route(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    app.post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    let reader = authorized_client(&key(&app, "default", &["read"], None).await).expect("client");
    let writer = authorized_client(&key(&app, "default", &["write"], None).await).expect("client");
    let before = event_count(&app.db).await.expect("count");

    let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "1"});
    assert_eq!(
        call(reader.get(app.url("/api/v1/products"))).await.0,
        StatusCode::OK
    );
    assert_refused(
        &call(
            reader
                .post(app.url("/api/v1/stock/receipts"))
                .json(&receipt),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_refused(
        &call(reader.get(app.url("/api/v1/admin/projections"))).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_refused(
        &call(reader.get(app.url("/api/v1/api-keys"))).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(event_count(&app.db).await.expect("count"), before);

    assert_eq!(
        call(
            writer
                .post(app.url("/api/v1/stock/receipts"))
                .json(&receipt)
        )
        .await
        .0,
        StatusCode::CREATED
    );
    assert_refused(
        &call(writer.get(app.url("/api/v1/products"))).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    let (status, body, _) = call(
        writer
            .post(app.url("/api/v1/api-keys"))
            .json(&json!({"scopes": ["admin"]})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a write key must not mint keys: {body}"
    );
    app.stop().await.expect("stop");
}

async fn tenants_cannot_read_touch_or_detect_each_other(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    auth_store::create_tenant(&app.db, "acme", "Asia/Tashkent")
        .await
        .expect("tenant");
    let acme =
        authorized_client(&key(&app, "acme", &["admin"], Some(10_000)).await).expect("client");

    app.post("/api/v1/products", &product("P1", "dairy", Some("5")))
        .await;
    let (_, body) = app
        .post(
            "/api/v1/stock/receipts",
            &json!({"warehouse_id": "W1", "product_id": "P1", "qty": "3"}),
        )
        .await;
    app.get_after(
        "/api/integrations/inventory-levels",
        &body["data"]["position"],
    )
    .await;

    let missing = call(acme.get(app.url("/api/v1/products/P1"))).await;
    assert_refused(&missing, StatusCode::NOT_FOUND, "not_found");
    let unknown = call(acme.get(app.url("/api/v1/products/NEVER"))).await;
    assert_eq!(
        missing.1, unknown.1,
        "another tenant's id must look like no id at all"
    );
    for path in [
        "/api/v1/products",
        "/api/integrations/inventory-levels",
        "/api/integrations/inventory-levels?product_id=P1",
        "/api/integrations/product-movement-history?product_id=P1",
    ] {
        let (status, body, _) = call(acme.get(app.url(path))).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["data"]["items"], json!([]), "{path} leaked: {body}");
    }
    let refused = call(
        acme.post(app.url("/api/v1/stock/issues"))
            .json(&json!({"warehouse_id": "W1", "product_id": "P1", "qty": 1, "reason": "x"})),
    )
    .await;
    assert_refused(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_product",
    );
    let renamed = json!({"sku": "X", "name": "Hijacked", "category": "c", "unit": "u"});
    assert_refused(
        &call(acme.put(app.url("/api/v1/products/P1")).json(&renamed)).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // The same id in acme is acme's own product; default's stays as it was.
    let (status, body, _) = call(
        acme.post(app.url("/api/v1/products"))
            .json(&product("P1", "tools", None)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    wait_caught_up(&app.db, &[names::CATALOG], Duration::from_secs(10))
        .await
        .expect("caught up");
    let (_, mine) = app.get("/api/v1/products/P1").await;
    assert_eq!(mine["data"]["category"], "dairy");
    let (_, theirs, _) = call(acme.get(app.url("/api/v1/products/P1"))).await;
    assert_eq!(theirs["data"]["category"], "tools");

    // Keys: each tenant lists only its own, and cannot revoke the other's.
    let (_, own, _) = call(acme.get(app.url("/api/v1/api-keys"))).await;
    assert_eq!(own["data"]["items"].as_array().map(Vec::len), Some(1));
    let (_, default_keys) = app.get("/api/v1/api-keys").await;
    let default_key_id = default_keys["data"]["items"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let revoke =
        call(acme.post(app.url(&format!("/api/v1/api-keys/{default_key_id}/revoke")))).await;
    assert_refused(&revoke, StatusCode::NOT_FOUND, "not_found");
    let tenants: Vec<String> = fetch_strings(
        &app.db,
        "SELECT DISTINCT metadata ->> 'tenant_id' FROM events ORDER BY 1",
    )
    .await
    .expect("tenants");
    assert_eq!(tenants, ["acme", "default"], "every event names its tenant");
    app.stop().await.expect("stop");
}

fn forge(header: &Value, claims: &Value, secret: Option<&str>) -> String {
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    match secret {
        Some(secret) => {
            let mut validation_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            validation_header.typ = Some("JWT".into());
            let claims: Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("b64"))
                    .expect("json");
            jsonwebtoken::encode(
                &validation_header,
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
            )
            .expect("sign")
        }
        None => format!("{header}.{claims}."),
    }
}

async fn login_tokens_work_and_forged_or_stale_ones_do_not(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    config.jwt_secret = Some(JWT_SECRET.to_string());
    let app = spawn_app_with(config, Role::All).await.expect("app");
    karvon_app::auth::create_user(
        &app.db,
        "default",
        "dilnoza",
        "correct horse battery",
        vec!["read".into()],
    )
    .await
    .expect("user");
    let plain = reqwest::Client::new();
    let login = |password: &str| {
        plain
            .post(app.url("/api/auth/login"))
            .json(&json!({"username": "dilnoza", "password": password}))
    };

    assert_refused(
        &call(login("wrong password")).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let nobody = call(
        plain
            .post(app.url("/api/auth/login"))
            .json(&json!({"username": "ghost", "password": "x"})),
    )
    .await;
    assert_refused(&nobody, StatusCode::UNAUTHORIZED, "unauthorized");
    let (status, body, _) = call(login("correct horse battery")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let token = body["data"]["token"].as_str().expect("token").to_string();
    assert!(body["data"]["expires_at"].is_string());

    let url = app.url("/api/v1/products");
    assert_eq!(
        call(plain.get(&url).bearer_auth(&token)).await.0,
        StatusCode::OK
    );
    let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "1"});
    assert_refused(
        &call(
            plain
                .post(app.url("/api/v1/stock/receipts"))
                .bearer_auth(&token)
                .json(&receipt),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    let now = chrono::Utc::now().timestamp();
    // A real token's user version (it ties a token to the user's current
    // password): forged claims carry it, so only what is forged differs.
    let issued: Value = {
        use base64::Engine;
        let payload = token.split('.').nth(1).expect("payload");
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .expect("base64"),
        )
        .expect("claims")
    };
    let ver = issued["ver"].clone();
    assert!(ver.as_str().is_some_and(|ver| !ver.is_empty()), "{issued}");
    let claims = |iss: &str, aud: &str, exp: i64| json!({"sub": "dilnoza", "tenant": "default", "scopes": ["admin"], "ver": ver, "iss": iss, "aud": aud, "iat": now, "exp": exp});
    let forged = [
        (
            "alg none",
            forge(
                &json!({"alg": "none", "typ": "JWT"}),
                &claims("karvon", "karvon-api", now + 600),
                None,
            ),
        ),
        (
            "wrong key",
            forge(
                &Value::Null,
                &claims("karvon", "karvon-api", now + 600),
                Some("some-other-secret-0123456789"),
            ),
        ),
        (
            "expired",
            forge(
                &Value::Null,
                &claims("karvon", "karvon-api", now - 120),
                Some(JWT_SECRET),
            ),
        ),
        (
            "wrong audience",
            forge(
                &Value::Null,
                &claims("karvon", "someone-else", now + 600),
                Some(JWT_SECRET),
            ),
        ),
        (
            "wrong issuer",
            forge(
                &Value::Null,
                &claims("mallory", "karvon-api", now + 600),
                Some(JWT_SECRET),
            ),
        ),
    ];
    for (what, token) in forged {
        let answer = call(plain.get(&url).bearer_auth(&token)).await;
        assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "{what} was accepted");
    }
    let control = forge(
        &Value::Null,
        &claims("karvon", "karvon-api", now + 600),
        Some(JWT_SECRET),
    );
    assert_eq!(
        call(plain.get(&url).bearer_auth(&control)).await.0,
        StatusCode::OK,
        "the forging itself is broken"
    );
    // The scopes come from the user record, not from the token's claims.
    assert_refused(
        &call(
            plain
                .post(app.url("/api/v1/stock/receipts"))
                .bearer_auth(&control)
                .json(&receipt),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    app.stop().await.expect("stop");
}

async fn the_61st_request_in_a_minute_is_refused_whatever_the_headers_say(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let limited = authorized_client(&key(&app, "default", &["read"], None).await).expect("client");
    let url = app.url("/api/v1/products");
    // Stay inside one window: wait if this minute is about to end.
    let second = chrono::Utc::now().timestamp() % 60;
    if second > 45 {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
    for request in 1..=60 {
        let (status, body, _) = call(limited.get(&url)).await;
        assert_eq!(status, StatusCode::OK, "request {request}: {body}");
    }
    let answer = call(limited.get(&url)).await;
    assert_refused(&answer, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after: u64 = answer
        .2
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=60).contains(&retry_after));
    let spoofed = call(
        limited
            .get(&url)
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Real-IP", "203.0.113.9"),
    )
    .await;
    assert_refused(&spoofed, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // Another key is counted on its own.
    let other = authorized_client(&key(&app, "default", &["read"], None).await).expect("client");
    assert_eq!(call(other.get(&url)).await.0, StatusCode::OK);

    // Unauthenticated attempts are counted per peer address.
    let plain = reqwest::Client::new();
    let mut last = StatusCode::OK;
    for _ in 0..61 {
        last = call(plain.get(&url).bearer_auth("kvdeadbeef_0000")).await.0;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn the_database_holds_no_plaintext_key_or_password() {
    let db = TestDb::create().await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let secret_key = key(&app, "default", &["read"], None).await;
    let password = "a-very-memorable-passphrase";
    karvon_app::auth::create_user(&app.db, "default", "aziz", password, vec!["read".into()])
        .await
        .expect("user");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) FROM information_schema.tables
          WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(app.pg())
    .await
    .expect("tables");
    let (_, secret) = secret_key.split_once('_').expect("secret");
    for table in tables {
        let dump: Option<String> =
            sqlx::query_scalar(&format!("SELECT string_agg(t::text, '\n') FROM {table} t"))
                .fetch_one(app.pg())
                .await
                .expect("dump");
        let dump = dump.unwrap_or_default();
        assert!(!dump.contains(secret), "{table} holds the key's secret");
        assert!(!dump.contains(password), "{table} holds the password");
    }
    app.stop().await.expect("stop");
}

async fn the_cli_creates_tenants_and_prints_a_working_key_on_its_last_line(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let karvon = |args: &[&str]| {
        std::process::Command::new(karvon_binary().expect("binary"))
            .args(args)
            .env("KARVON_DATABASE_URL", &db.url)
            .env("KARVON_LOG", "warn")
            .output()
            .expect("runs")
    };
    let output = karvon(&[
        "tenant",
        "create",
        "samarkand",
        "--time-zone",
        "Asia/Samarkand",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = karvon(&["tenant", "create", "bad", "--time-zone", "Mars/Olympus"]);
    assert!(!output.status.success());
    let output = karvon(&[
        "api-key",
        "create",
        "--tenant",
        "samarkand",
        "--scopes",
        "read,write",
        "--rate-limit",
        "120",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let key = stdout
        .lines()
        .last()
        .expect("a last line")
        .trim()
        .to_string();
    let client = authorized_client(&key).expect("client");
    let (status, body, _) = call(
        client
            .post(app.url("/api/v1/products"))
            .json(&product("S1", "fruit", None)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let limit = fetch_strings(
        &app.db,
        "SELECT CAST(rate_limit_per_minute AS TEXT) FROM api_keys WHERE tenant_id = 'samarkand'",
    )
    .await
    .expect("limit");
    assert_eq!(limit, ["120"]);
    let output = karvon(&[
        "api-key", "create", "--tenant", "nowhere", "--scopes", "read",
    ]);
    assert!(
        !output.status.success(),
        "a key for a missing tenant was created"
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn row_level_security_hides_rows_from_the_query_role_without_a_tenant() {
    let db = TestDb::create().await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    auth_store::create_tenant(&app.db, "acme", "UTC")
        .await
        .expect("tenant");
    let acme =
        authorized_client(&key(&app, "acme", &["admin"], Some(10_000)).await).expect("client");
    app.post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    app.post(
        "/api/v1/stock/receipts",
        &json!({"warehouse_id": "W1", "product_id": "P1", "qty": "2"}),
    )
    .await;
    call(
        acme.post(app.url("/api/v1/products"))
            .json(&product("A1", "tools", None)),
    )
    .await;
    call(
        acme.post(app.url("/api/v1/stock/receipts"))
            .json(&json!({"warehouse_id": "W1", "product_id": "A1", "qty": "2"})),
    )
    .await;
    wait_caught_up(
        &app.db,
        &[names::CATALOG, names::STOCK],
        Duration::from_secs(10),
    )
    .await
    .expect("caught up");

    let count_as = |tenant: Option<&'static str>, table: &'static str| {
        let pool = app.pg().clone();
        async move {
            let mut tx = pool.begin().await.expect("begin");
            sqlx::query("SET LOCAL ROLE karvon_query")
                .execute(&mut *tx)
                .await
                .expect("role");
            if let Some(tenant) = tenant {
                sqlx::query("SELECT set_config('karvon.tenant', $1, true)")
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await
                    .expect("tenant");
            }
            // No WHERE clause: only the policy stands between the role and the rows.
            let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
                .fetch_one(&mut *tx)
                .await
                .expect("count");
            let foreign: i64 = sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {table} WHERE tenant_id <> coalesce($1, '')"
            ))
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await
            .expect("count");
            (rows, foreign)
        }
    };
    for table in ["catalog.products", "stock.levels", "stock.movements"] {
        assert_eq!(
            count_as(None, table).await,
            (0, 0),
            "{table} visible without a tenant"
        );
        let (rows, foreign) = count_as(Some("acme"), table).await;
        assert!(rows > 0, "{table}: acme sees nothing of its own");
        assert_eq!(foreign, 0, "{table}: acme sees another tenant's rows");
    }
    let owner_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM stock.levels")
        .fetch_one(app.pg())
        .await
        .expect("count");
    assert_eq!(
        owner_rows, 2,
        "the projection's own role must still see every tenant"
    );
    app.stop().await.expect("stop");
}

#[tokio::test]
async fn an_unprivileged_owner_role_runs_everything_under_forced_rls() {
    let db = TestDb::create_owned_by_new_role().await.expect("db");
    let app = spawn_app(&db).await.expect("app as an unprivileged role");
    let (status, body) = app
        .post("/api/v1/products", &product("P1", "dairy", None))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post(
            "/api/v1/stock/receipts",
            &json!({"warehouse_id": "W1", "product_id": "P1", "qty": "4"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .get_after(
            "/api/integrations/inventory-levels",
            &body["data"]["position"],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["items"][0]["on_hand"], "4",
        "projection writes or tenant reads failed under FORCE RLS"
    );
    let superuser: bool = sqlx::query_scalar(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(app.pg())
    .await
    .expect("role");
    assert!(!superuser, "the test must run as an unprivileged role");
    app.stop().await.expect("stop");
}

/// Waits for a new minute when this one is about to end, so a test's
/// requests fall into one rate-limit window.
async fn inside_one_window(seconds_needed: i64) {
    let second = chrono::Utc::now().timestamp() % 60;
    if second > 60 - seconds_needed {
        tokio::time::sleep(Duration::from_secs((61 - second) as u64)).await;
    }
}

/// A peer repeating a bad key is refused from memory once over its limit:
/// no counter write per request (SQLite keeps the windows in memory;
/// PostgreSQL gets batched increments of admitted hits only) and no key
/// lookup for a prefix already found unknown, while a valid key — known
/// to this instance or never used before — still works: someone else's
/// failures behind the same address (a proxy, a NAT) never refuse it.
async fn a_flood_of_bad_keys_costs_no_write_per_request(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let plain = reqwest::Client::new();
    let url = app.url("/api/v1/products");
    inside_one_window(20).await;
    assert_eq!(app.get("/api/v1/products").await.0, StatusCode::OK);

    let mut unauthorized = 0;
    let mut limited = 0;
    for _ in 0..200 {
        let answer = call(plain.get(&url).bearer_auth("kv0123456789ab_0000")).await;
        match answer.0 {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                limited += 1;
                assert!(answer.2.get("retry-after").is_some(), "no Retry-After");
            }
            other => panic!("unexpected {other}: {}", answer.1),
        }
    }
    assert_eq!((unauthorized, limited), (60, 140));
    // Another wrong key from that peer: looked up, wrong, refused 429.
    let fresh = call(plain.get(&url).bearer_auth("kvfedcba987654_0000")).await;
    assert_refused(&fresh, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // The admin key, known to this instance, still gets through.
    assert_eq!(app.get("/api/v1/products").await.0, StatusCode::OK);
    // So does a valid key this instance has never seen (the review's
    // "good key behind 62 bad ones": it answered 429).
    let unseen = key(&app, "default", &["read"], None).await;
    let answer = call(plain.get(&url).bearer_auth(&unseen)).await;
    assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);

    tokio::time::sleep(Duration::from_millis(600)).await;
    let counted = fetch_strings(
        &app.db,
        "SELECT CAST(coalesce(sum(hits), 0) AS TEXT) FROM rate_limit_windows WHERE subject LIKE 'peer:%'",
    )
    .await
    .expect("windows");
    let counted: i64 = counted[0].parse().expect("number");
    match backend {
        Backend::Sqlite => assert_eq!(counted, 0, "SQLite wrote rate-limit windows"),
        Backend::Postgres => assert_eq!(
            counted, 60,
            "only admitted attempts are shared, in batches, not one write per request"
        ),
    }
    app.stop().await.expect("stop");
}

/// With a tenant cap, all of a tenant's keys together stay under it, while
/// another tenant is not affected.
async fn a_tenant_cap_limits_all_its_keys_together(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    config.tenant_rate_limit = 5;
    let app = spawn_app_with(config, Role::Api).await.expect("app");
    auth_store::create_tenant(&app.db, "acme", "UTC")
        .await
        .expect("tenant");
    let first = authorized_client(&key(&app, "acme", &["read"], None).await).expect("client");
    let second = authorized_client(&key(&app, "acme", &["read"], None).await).expect("client");
    let other = authorized_client(&key(&app, "default", &["read"], None).await).expect("client");
    let url = app.url("/api/v1/products");
    inside_one_window(10).await;
    for client in [&first, &second, &first, &second, &first] {
        assert_eq!(call(client.get(&url)).await.0, StatusCode::OK);
    }
    let answer = call(second.get(&url)).await;
    assert_refused(&answer, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    assert_eq!(call(other.get(&url)).await.0, StatusCode::OK);
    app.stop().await.expect("stop");
}

/// Ten wrong passwords for one username lock it (429 with Retry-After) even
/// for the right password, from any address; another user still logs in.
async fn ten_failed_logins_lock_the_username_not_others(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    config.jwt_secret = Some(JWT_SECRET.to_string());
    let app = spawn_app_with(config, Role::Api).await.expect("app");
    for user in ["dilnoza", "bobur"] {
        karvon_app::auth::create_user(
            &app.db,
            "default",
            user,
            "correct horse battery",
            vec!["read".into()],
        )
        .await
        .expect("user");
    }
    let plain = reqwest::Client::new();
    let login = |username: &str, password: &str| {
        plain
            .post(app.url("/api/auth/login"))
            .json(&json!({"username": username, "password": password}))
    };
    for attempt in 1..=10 {
        let answer = call(login("dilnoza", "wrong password")).await;
        assert_eq!(answer.0, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let locked = call(login("dilnoza", "correct horse battery")).await;
    assert_refused(&locked, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry_after: u64 = locked
        .2
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    let (status, body, _) = call(login("bobur", "correct horse battery")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The lock is the username's, held in the store: a second instance on
    // the same database (another address, as far as it knows) refuses too.
    let mut config = test_config(&db);
    config.jwt_secret = Some(JWT_SECRET.to_string());
    let other = spawn_app_with(config, Role::Api).await.expect("app");
    let answer = call(
        plain
            .post(other.url("/api/auth/login"))
            .json(&json!({"username": "dilnoza", "password": "correct horse battery"})),
    )
    .await;
    assert_refused(&answer, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    other.stop().await.expect("stop");
    app.stop().await.expect("stop");
}

on_both_backends!(
    missing_wrong_revoked_and_expired_keys_are_refused,
    scopes_are_enforced_per_route,
    tenants_cannot_read_touch_or_detect_each_other,
    login_tokens_work_and_forged_or_stale_ones_do_not,
    the_61st_request_in_a_minute_is_refused_whatever_the_headers_say,
    the_cli_creates_tenants_and_prints_a_working_key_on_its_last_line,
    a_flood_of_bad_keys_costs_no_write_per_request,
    a_tenant_cap_limits_all_its_keys_together,
    ten_failed_logins_lock_the_username_not_others,
);

/// A connection that does not finish its request headers is closed after
/// the header timeout, whether it sent part of them or nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_do_not_finish_their_headers_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::create_on(Backend::Sqlite).await.expect("db");
    let mut config = test_config(&db);
    config.header_read_timeout_ms = 1_000;
    let app = spawn_app_with(config, Role::Api).await.expect("app");
    let address = app.address.trim_start_matches("http://").to_string();

    for partial in [
        &b"GET /health HTTP/1.1\r\nHost: karvon\r\nX-Slow: "[..],
        b"",
    ] {
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        stream.write_all(partial).await.expect("write");
        let started = std::time::Instant::now();
        let mut buffer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(8), stream.read_to_end(&mut buffer))
            .await
            .expect("the server kept a connection with unfinished headers open");
        // Closed (an EOF, possibly after an error answer, or a reset).
        let _ = read;
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(800),
            "closed before the timeout: {elapsed:?}"
        );
    }
    // A complete request is still answered.
    let (status, _) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await.expect("stop");
}

/// With a cap of two connections, a third is not served until one of the
/// two closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let db = TestDb::create_on(Backend::Sqlite).await.expect("db");
    let mut config = test_config(&db);
    config.max_connections = 2;
    config.header_read_timeout_ms = 30_000;
    let app = spawn_app_with(config, Role::Api).await.expect("app");
    let address = app.address.trim_start_matches("http://").to_string();
    let first = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let _second = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");

    let url = app.url("/health");
    let third = tokio::spawn(async move {
        reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .map(|response| response.status())
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served beyond the cap of two"
    );
    drop(first);
    let status = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third connection was not served after one closed")
        .expect("task")
        .expect("answer");
    assert_eq!(status, StatusCode::OK);
    app.stop().await.expect("stop");
}

/// A login token lives only as long as its user does as it was: deleted,
/// re-created or given a new password (and scopes), its tokens end within
/// the 5 s a user record is trusted; the scopes are the record's.
async fn login_tokens_end_when_their_user_changes(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    config.jwt_secret = Some(JWT_SECRET.to_string());
    let app = spawn_app_with(config, Role::Api).await.expect("app");
    let plain = reqwest::Client::new();
    let login = |password: &'static str| {
        plain
            .post(app.url("/api/auth/login"))
            .json(&json!({"username": "dilnoza", "password": password}))
    };
    let create = |password: &'static str, scopes: &[&str]| {
        let scopes = scopes.iter().map(|scope| scope.to_string()).collect();
        karvon_app::auth::create_user(&app.db, "default", "dilnoza", password, scopes)
    };
    let token_of = |answer: (StatusCode, Value, reqwest::header::HeaderMap)| {
        assert_eq!(answer.0, StatusCode::OK, "{}", answer.1);
        answer.1["data"]["token"]
            .as_str()
            .expect("token")
            .to_string()
    };
    let products = app.url("/api/v1/products");
    let until_refused = |token: String| {
        let (plain, products) = (plain.clone(), products.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let status = call(plain.get(&products).bearer_auth(&token)).await.0;
                if status == StatusCode::UNAUTHORIZED {
                    return;
                }
                assert_eq!(status, StatusCode::OK);
                assert!(Instant::now() < deadline, "the old token still works");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    create("first password", &["read"]).await.expect("user");
    let first = token_of(call(login("first password")).await);
    assert_eq!(
        call(plain.get(&products).bearer_auth(&first)).await.0,
        StatusCode::OK
    );
    // Re-created with a new password and more scopes: the old token ends.
    create("second password", &["read", "write"])
        .await
        .expect("user");
    until_refused(first).await;
    let second = token_of(call(login("second password")).await);
    let receipt = json!({"warehouse_id": "W1", "product_id": "P1", "qty": "1"});
    let answer = call(
        plain
            .post(app.url("/api/v1/stock/receipts"))
            .bearer_auth(&second)
            .json(&receipt),
    )
    .await;
    assert_ne!(
        answer.0,
        StatusCode::FORBIDDEN,
        "write is the user's now: {}",
        answer.1
    );
    // Deleted: its token ends too.
    karvon_tests::execute(&app.db, "DELETE FROM users WHERE username = 'dilnoza'")
        .await
        .expect("delete");
    until_refused(second).await;
    app.stop().await.expect("stop");
}

/// A key minted over HTTP gets at most the limit of the key minting it.
async fn a_minted_key_gets_at_most_its_minters_limit(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app_with(test_config(&db), Role::Api)
        .await
        .expect("app");
    let minter =
        authorized_client(&key(&app, "default", &["admin"], Some(100)).await).expect("client");
    let mint = |body: Value| minter.post(app.url("/api/v1/api-keys")).json(&body);
    let (status, body, _) = call(mint(json!({"scopes": ["read"], "rate_limit": 1000}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 100")),
        "{body}"
    );
    let (status, body, _) = call(mint(json!({"scopes": ["read"], "rate_limit": 100}))).await;
    assert_eq!(
        (status, &body["data"]["rate_limit"]),
        (StatusCode::CREATED, &json!(100)),
        "{body}"
    );
    let (status, body, _) = call(mint(json!({"scopes": ["read"]}))).await;
    assert_eq!(
        (status, &body["data"]["rate_limit"]),
        (StatusCode::CREATED, &json!(60)),
        "{body}"
    );
    let small =
        authorized_client(&key(&app, "default", &["admin"], Some(30)).await).expect("client");
    let (status, body, _) = call(
        small
            .post(app.url("/api/v1/api-keys"))
            .json(&json!({"scopes": ["read"]})),
    )
    .await;
    assert_eq!(
        (status, &body["data"]["rate_limit"]),
        (StatusCode::CREATED, &json!(30)),
        "{body}"
    );
    app.stop().await.expect("stop");
}

on_both_backends!(
    login_tokens_end_when_their_user_changes,
    a_minted_key_gets_at_most_its_minters_limit,
);

/// Behind one address (a NAT, a proxy) others' failed logins never refuse
/// a correct password: failures answer 429 past the address's limit, the
/// right password still gets its token.
async fn a_correct_login_behind_many_failures_is_served(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let mut config = test_config(&db);
    config.jwt_secret = Some(JWT_SECRET.to_string());
    let app = spawn_app_with(config, Role::Api).await.expect("app");
    karvon_app::auth::create_user(
        &app.db,
        "default",
        "dilnoza",
        "correct horse battery",
        vec!["read".into()],
    )
    .await
    .expect("user");
    let plain = reqwest::Client::new();
    let login = |username: String, password: &str| {
        plain
            .post(app.url("/api/auth/login"))
            .json(&json!({"username": username, "password": password}))
    };
    inside_one_window(40).await;
    let mut last = StatusCode::OK;
    for n in 0..61 {
        // Another username each time: no username lock, only the address's.
        last = call(login(format!("typo{n}"), "wrong")).await.0;
    }
    assert_eq!(
        last,
        StatusCode::TOO_MANY_REQUESTS,
        "the address is over its limit"
    );
    let (status, body, _) = call(login("dilnoza".into(), "correct horse battery")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["data"]["token"].is_string(), "{body}");
    app.stop().await.expect("stop");
}

on_both_backends!(a_correct_login_behind_many_failures_is_served);
