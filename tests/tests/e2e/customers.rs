//! Customers and their purchase history.

use karvon_tests::{Backend, TestDb, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn sale(id: &str, customer: Option<&str>, at: &str, lines: Value) -> Value {
    json!({"sale_id": id, "branch_id": "B1", "cashier": "ali", "customer_id": customer,
           "sale_type": "retail", "payment_type": "cash", "occurred_at": at, "lines": lines})
}

async fn customers_are_kept_with_their_purchases(backend: Backend) {
    let db = TestDb::create_on(backend).await.expect("db");
    let app = spawn_app(&db).await.expect("app");
    let (status, body) = app
        .post(
            "/api/v1/customers",
            &json!({"customer_id": "C1", "name": "Aziz", "phone": "+998901234567"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post(
            "/api/v1/customers",
            &json!({"customer_id": "C1", "name": "Other"}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::CONFLICT, &json!("already_exists"))
    );
    let (status, body) = app
        .send(
            app.client
                .put(app.url("/api/v1/customers/C1"))
                .json(&json!({"name": "Aziz Karimov", "phone": "+998901234567"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = app
        .send(
            app.client
                .put(app.url("/api/v1/customers/NOPE"))
                .json(&json!({"name": "X"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post(
            "/api/v1/customers",
            &json!({"customer_id": "C2", "name": "  "}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let line = |product: &str, qty: &str, price: &str| json!({"product_id": product, "qty": qty, "unit_price": price});
    for body in [
        sale(
            "S1",
            Some("C1"),
            "2026-11-20T10:00:00+05:00",
            json!([line("P1", "2", "1000"), line("P2", "1", "500")]),
        ),
        sale(
            "S2",
            Some("C1"),
            "2026-11-21T10:00:00+05:00",
            json!([line("P1", "1", "900")]),
        ),
        sale(
            "S3",
            None,
            "2026-11-21T11:00:00+05:00",
            json!([line("P1", "1", "900")]),
        ),
        sale(
            "S4",
            Some("C9"),
            "2026-11-22T11:00:00+05:00",
            json!([line("P2", "3", "100")]),
        ),
    ] {
        let (status, response) = app.post("/api/v1/sales", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{response}");
    }
    let (_, refunded) = app
        .post(
            "/api/v1/sales/S1/refund",
            &json!({"occurred_at": "2026-11-22T09:00:00+05:00", "reason": "x",
                    "lines": [{"product_id": "P1", "qty": "1"}]}),
        )
        .await;

    let (status, history) = app
        .get_after(
            "/api/integrations/customer-purchase-history?customer_id=C1",
            &refunded["data"]["position"],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let data = &history["data"];
    assert_eq!(data["name"], "Aziz Karimov");
    assert_eq!(data["sales_count"], 2);
    assert_eq!(
        data["total_spent"]
            .as_str()
            .map(|text| text.parse::<rust_decimal::Decimal>().ok()),
        Some(Some(rust_decimal::Decimal::from(2400)))
    );
    let sales: Vec<(&str, &str, &str)> = data["sales"]
        .as_array()
        .expect("sales")
        .iter()
        .map(|sale| {
            (
                sale["sale_id"].as_str().unwrap_or_default(),
                sale["total"].as_str().unwrap_or_default(),
                sale["refunded_amount"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(sales, [("S2", "900", "0"), ("S1", "2500", "1000")]);
    assert_eq!(data["sales"][1]["lines"].as_array().map(Vec::len), Some(2));

    // A customer named by a sale before being registered.
    let (status, body) = app
        .get("/api/integrations/customer-purchase-history?customer_id=C9")
        .await;
    assert_eq!(
        (status, &body["data"]["name"]),
        (StatusCode::OK, &Value::Null)
    );
    let (status, _) = app
        .get("/api/integrations/customer-purchase-history?customer_id=NOBODY")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, list) = app.get("/api/v1/customers").await;
    let ids: Vec<&str> = list["data"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["customer_id"].as_str())
        .collect();
    assert_eq!(ids, ["C1"]);
    let (status, one) = app.get("/api/v1/customers/C1").await;
    assert_eq!(
        (status, &one["data"]["phone"]),
        (StatusCode::OK, &json!("+998901234567"))
    );
    app.stop().await.expect("stop");
}

on_both_backends!(customers_are_kept_with_their_purchases);
