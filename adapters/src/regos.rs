//! The REGOS gateway (SPEC §3 "Integrations", REGOS): `POST
//! {base_url}/gateway/out/{integration_key}/v1/{Entity}/{Verb}` with JSON,
//! answered `{ok, result, next_offset, total}` — errors too come with HTTP
//! 200 and `ok: false`. Code 8213 (the gateway's rate limit) is retried with
//! exponential back-off and jitter; every other code is the caller's error,
//! with REGOS's description. The client keeps to the integration's rate
//! (a token bucket in the database, shared by every instance). The key is
//! part of the URL: no error message carries the URL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::StorageError;
use crate::db::{Db, on_pool};

/// REGOS's rate limit: the code, and the gateway's refill rate and burst.
pub const RATE_LIMITED: i64 = 8213;
pub const GATEWAY_RATE: f64 = 2.0;
pub const GATEWAY_BURST: f64 = 50.0;

/// Rows asked for per page.
const PAGE: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum RegosError {
    /// `ok: false` with a code other than 8213 (or 8213 after the retries).
    #[error("REGOS refused {method} (code {code}): {description}")]
    Refused {
        method: String,
        code: i64,
        description: String,
    },
    #[error("REGOS answered HTTP {0}")]
    Http(u16),
    #[error("REGOS did not answer within {0} s")]
    Timeout(u64),
    #[error("REGOS could not be reached: {0}")]
    Transport(String),
    #[error("REGOS sent an unreadable answer to {method}: {detail}")]
    Malformed { method: String, detail: String },
    #[error("REGOS's answer to {method} is larger than {cap} bytes (settings.max_response_bytes)")]
    TooLarge { method: String, cap: usize },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// How the client paces itself.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Requests per second the client allows itself (`None`: no limit).
    pub rate: Option<f64>,
    pub burst: f64,
    /// First back-off after an 8213; doubles per retry, plus jitter.
    pub backoff: Duration,
    /// Attempts per request when REGOS keeps answering 8213.
    pub attempts: u32,
    pub timeout: Duration,
    /// The longest answer read (64 MiB by default).
    pub max_response_bytes: usize,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            rate: Some(GATEWAY_RATE),
            burst: GATEWAY_BURST,
            backoff: Duration::from_millis(250),
            attempts: 8,
            timeout: Duration::from_secs(30),
            max_response_bytes: crate::onec::MAX_RESPONSE_BYTES,
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    /// `{base_url}/gateway/out/{key}/v1` — secret: never logged.
    root: String,
    db: Db,
    /// The rate bucket's name (the integration).
    bucket: String,
    pace: Pace,
}

/// One page of a list method.
#[derive(Debug)]
pub struct Page {
    pub rows: Vec<Value>,
    pub next_offset: Option<u64>,
    pub total: Option<u64>,
}

impl Client {
    pub fn new(
        db: Db,
        bucket: &str,
        base_url: &str,
        key: &str,
        pace: Pace,
    ) -> Result<Self, RegosError> {
        let http = reqwest::Client::builder()
            .timeout(pace.timeout)
            .build()
            .map_err(|error| RegosError::Transport(error.without_url().to_string()))?;
        Ok(Self {
            http,
            root: format!("{}/gateway/out/{key}/v1", base_url.trim_end_matches('/')),
            db,
            bucket: format!("regos:{bucket}"),
            pace,
        })
    }

    /// Calls `method` (`Entity/Verb`) and answers its `result` and paging.
    pub async fn call(&self, method: &str, body: &Value) -> Result<Page, RegosError> {
        let mut attempt = 0;
        loop {
            self.take_token().await?;
            let response = self
                .http
                .post(format!("{}/{method}", self.root))
                .header("Content-Type", "application/json;charset=utf-8")
                .json(body)
                .send()
                .await
                .map_err(|error| self.transport(error))?;
            let status = response.status();
            if !status.is_success() {
                return Err(RegosError::Http(status.as_u16()));
            }
            let body = crate::onec::read_capped(response, self.pace.max_response_bytes)
                .await
                .map_err(|error| match error {
                    crate::onec::CappedError::TooLarge(cap) => RegosError::TooLarge {
                        method: method.to_string(),
                        cap,
                    },
                    crate::onec::CappedError::Read(error) => self.transport(error),
                })?;
            let answer: Value = serde_json::from_slice(&body)
                .map_err(|error| self.malformed(method, error.to_string()))?;
            // `Sale/Get` answers `{success, result, total_count}`.
            if answer["ok"] == Value::Bool(true) || answer["success"] == Value::Bool(true) {
                let rows = match &answer["result"] {
                    Value::Array(rows) => rows.clone(),
                    Value::Null => Vec::new(),
                    other => vec![other.clone()],
                };
                return Ok(Page {
                    rows,
                    next_offset: answer["next_offset"].as_u64(),
                    total: answer["total"]
                        .as_u64()
                        .or_else(|| answer["total_count"].as_u64()),
                });
            }
            let code = answer["result"]["error"].as_i64().unwrap_or(-1);
            let description = answer["result"]["description"]
                .as_str()
                .unwrap_or("no description")
                .to_string();
            attempt += 1;
            if code != RATE_LIMITED || attempt >= self.pace.attempts {
                return Err(RegosError::Refused {
                    method: method.to_string(),
                    code,
                    description,
                });
            }
            tokio::time::sleep(backoff(self.pace.backoff, attempt)).await;
        }
    }

    /// Every row of a list method, page by page (`limit`/`offset`) until a
    /// page is empty or the offset reaches `total`.
    pub async fn all(&self, method: &str, filter: &Value) -> Result<Vec<Value>, RegosError> {
        let mut rows = Vec::new();
        let mut offset: u64 = 0;
        loop {
            let mut body = filter.clone();
            if let Some(body) = body.as_object_mut() {
                body.insert("limit".into(), json!(PAGE));
                body.insert("offset".into(), json!(offset));
            }
            let page = self.call(method, &body).await?;
            if page.rows.is_empty() {
                return Ok(rows);
            }
            let got = page.rows.len() as u64;
            rows.extend(page.rows);
            // The gateway may cap `limit`: go on from where it says.
            let next = page
                .next_offset
                .filter(|next| *next > offset)
                .unwrap_or(offset + got);
            offset = next;
            if page.total.is_some_and(|total| offset >= total) {
                return Ok(rows);
            }
        }
    }

    /// Waits for a token of the integration's bucket (shared by every
    /// instance through the database).
    async fn take_token(&self) -> Result<(), RegosError> {
        let Some(rate) = self.pace.rate else {
            return Ok(());
        };
        loop {
            if take(&self.db, &self.bucket, rate, self.pace.burst).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs_f64(1.0 / rate.max(0.001))).await;
        }
    }

    fn transport(&self, error: reqwest::Error) -> RegosError {
        if error.is_timeout() {
            RegosError::Timeout(self.pace.timeout.as_secs().max(1))
        } else {
            RegosError::Transport(error.without_url().to_string())
        }
    }

    fn malformed(&self, method: &str, detail: String) -> RegosError {
        RegosError::Malformed {
            method: method.to_string(),
            detail,
        }
    }
}

/// `base × 2^(attempt−1)`, up to 8 s, plus up to half of it again.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let delay = base.saturating_mul(1 << attempt.saturating_sub(1).min(5));
    let delay = delay.min(Duration::from_secs(8));
    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) as f64 / 255.0 / 2.0;
    delay.mul_f64(1.0 + jitter)
}

/// Takes one token from `bucket` (refilled at `rate`/s up to `burst`);
/// false when it is empty.
async fn take(db: &Db, bucket: &str, rate: f64, burst: f64) -> Result<bool, StorageError> {
    let now = Utc::now().timestamp_millis();
    let refilled = "(tokens + ($3 - updated_ms) * $4 / 1000.0)";
    let update = format!(
        "UPDATE rate_buckets
            SET tokens = CASE WHEN {refilled} < $2 THEN {refilled} ELSE $2 END - 1,
                updated_ms = $3
          WHERE bucket = $1 AND CASE WHEN {refilled} < $2 THEN {refilled} ELSE $2 END >= 1"
    );
    let taken = on_pool!(db, write, pool => {
        sqlx::query(
            "INSERT INTO rate_buckets (bucket, tokens, updated_ms) VALUES ($1, $2, $3)
             ON CONFLICT (bucket) DO NOTHING",
        )
        .bind(bucket)
        .bind(burst)
        .bind(now)
        .execute(pool)
        .await?;
        sqlx::query(&update)
            .bind(bucket)
            .bind(burst)
            .bind(now)
            .bind(rate)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(taken == 1)
}

/// A retail cheque (`DocCheque`), or a flattened `Sale/Get` row, as far
/// as a sale needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cheque {
    /// The cheque's uuid, or `sale-<id>` for a `Sale/Get` row.
    pub uuid: String,
    pub date: DateTime<Utc>,
    pub closed: bool,
    pub is_return: bool,
    pub cashier: String,
    pub code: String,
    pub wholesale: bool,
    /// `cash`, `card` or `transfer` when REGOS says (cheques do not).
    pub payment: Option<String>,
    /// A `Sale/Get` row carries its line and its department; a cheque's
    /// lines are read separately.
    pub lines: Option<Vec<ChequeLine>>,
}

/// A cheque line (`DocChequeOperation`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChequeLine {
    pub item_id: i64,
    pub barcode: Option<String>,
    pub stock_id: i64,
    pub quantity: Decimal,
    pub price: Decimal,
    /// Cancelled on the till: not part of the sale.
    pub storno: bool,
}

#[derive(Deserialize)]
struct RawCheque {
    uuid: String,
    date: i64,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    status: Value,
    #[serde(default)]
    is_return: bool,
    #[serde(default)]
    cashier: Option<RawUser>,
}

#[derive(Deserialize)]
struct RawUser {
    #[serde(default)]
    full_name: Option<String>,
}

#[derive(Deserialize)]
struct RawLine {
    item: RawItem,
    stock_id: i64,
    quantity: Decimal,
    price: Decimal,
    #[serde(default)]
    has_storno: bool,
}

#[derive(Deserialize)]
struct RawItem {
    id: i64,
    #[serde(default)]
    base_barcode: Option<String>,
}

/// A `DocCheque/Get` row; the reason when it cannot be read.
pub fn cheque(row: &Value) -> Result<Cheque, String> {
    let raw: RawCheque = serde_json::from_value(row.clone())
        .map_err(|error| format!("unreadable cheque: {error}"))?;
    let date = DateTime::from_timestamp(raw.date, 0)
        .ok_or_else(|| format!("cheque {}: date {} is out of range", raw.uuid, raw.date))?;
    Ok(Cheque {
        wholesale: false,
        payment: None,
        lines: None,
        closed: raw.status == "Closed",
        is_return: raw.is_return,
        cashier: raw
            .cashier
            .and_then(|cashier| cashier.full_name)
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| "unknown".to_string()),
        code: raw.code.unwrap_or_default(),
        uuid: raw.uuid,
        date,
    })
}

#[derive(Deserialize)]
struct RawSaleRow {
    id: i64,
    date: String,
    department_id: i64,
    item_id: i64,
    quantity: Decimal,
    price: Decimal,
    #[serde(default)]
    sale_type: Option<String>,
    #[serde(default)]
    cashier: Option<String>,
    #[serde(default)]
    payment_type: Option<String>,
}

/// A flattened `Sale/Get` row (`fixtures/regos/sale-get.json`): one sale
/// of one line at a department, its `date` local to `zone`.
pub fn sale_row(row: &Value, zone: chrono_tz::Tz) -> Result<Cheque, String> {
    use chrono::TimeZone;
    let raw: RawSaleRow = serde_json::from_value(row.clone())
        .map_err(|error| format!("unreadable Sale/Get row: {error}"))?;
    let local =
        chrono::NaiveDateTime::parse_from_str(&raw.date, "%Y-%m-%dT%H:%M:%S").map_err(|_| {
            format!(
                "sale {}: date {:?} is not YYYY-MM-DDTHH:MM:SS",
                raw.id, raw.date
            )
        })?;
    let date = zone
        .from_local_datetime(&local)
        .earliest()
        .ok_or_else(|| format!("sale {}: {} does not exist in {zone}", raw.id, raw.date))?
        .with_timezone(&Utc);
    let wholesale = match raw.sale_type.as_deref() {
        None | Some("retail") => false,
        Some("wholesale") => true,
        Some(other) => return Err(format!("sale {}: sale_type {other:?} is unknown", raw.id)),
    };
    Ok(Cheque {
        uuid: format!("sale-{}", raw.id),
        date,
        closed: true,
        is_return: false,
        cashier: raw
            .cashier
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| "unknown".to_string()),
        code: raw.id.to_string(),
        wholesale,
        payment: raw.payment_type,
        lines: Some(vec![ChequeLine {
            item_id: raw.item_id,
            barcode: None,
            stock_id: raw.department_id,
            quantity: raw.quantity,
            price: raw.price,
            storno: false,
        }]),
    })
}

/// A `chequeitemoperation/get` row.
pub fn cheque_line(row: &Value) -> Result<ChequeLine, String> {
    let raw: RawLine = serde_json::from_value(row.clone())
        .map_err(|error| format!("unreadable cheque line: {error}"))?;
    Ok(ChequeLine {
        item_id: raw.item.id,
        barcode: raw.item.base_barcode.filter(|code| !code.trim().is_empty()),
        stock_id: raw.stock_id,
        quantity: raw.quantity,
        price: raw.price,
        storno: raw.has_storno,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEQUES: &str = include_str!("testdata/regos/doccheque-get.json");
    const LINES: &str = include_str!("testdata/regos/chequeitemoperation-get.json");

    #[test]
    fn fixtures_read_with_exact_numbers() {
        let cheques: Value = serde_json::from_str(CHEQUES).expect("json");
        let first = cheque(&cheques["result"][0]).expect("cheque");
        assert_eq!(first.uuid, "3f2b9c1e-5a7d-4e21-9b0a-1c2d3e4f5a60");
        assert!(first.closed && !first.is_return);
        assert_eq!(first.cashier, "Dilnoza K.");
        assert_eq!(first.date.timestamp(), 1_767_243_120);
        assert!(cheque(&cheques["result"][1]).expect("return").is_return);

        let lines: Value = serde_json::from_str(LINES).expect("json");
        let sugar = cheque_line(&lines["result"][1]).expect("line");
        assert_eq!(sugar.quantity.to_string(), "6.5");
        assert_eq!(sugar.price.to_string(), "13846.15");
        assert_eq!(sugar.barcode.as_deref(), Some("0478000000024"));
        assert_eq!((sugar.item_id, sugar.stock_id), (102, 1));
    }

    #[test]
    fn sale_get_rows_are_one_line_sales_at_local_time() {
        let rows: Value =
            serde_json::from_str(include_str!("testdata/regos/sale-get.json")).expect("json");
        let zone: chrono_tz::Tz = "Asia/Tashkent".parse().expect("zone");
        let retail = sale_row(&rows["result"][0], zone).expect("row");
        assert_eq!(retail.uuid, "sale-12345");
        assert_eq!(retail.date.to_rfc3339(), "2024-12-28T10:30:00+00:00");
        assert!(!retail.wholesale && retail.closed);
        let line = &retail.lines.as_ref().expect("lines")[0];
        assert_eq!((line.item_id, line.stock_id), (101, 1));
        assert_eq!(line.quantity * line.price, Decimal::from(500_000));
        let wholesale = sale_row(&rows["result"][1], zone).expect("row");
        assert!(wholesale.wholesale);
        assert_eq!(wholesale.payment.as_deref(), Some("card"));
    }

    #[test]
    fn back_off_doubles_with_jitter_and_stays_bounded() {
        let base = Duration::from_millis(100);
        assert!(backoff(base, 1) >= base && backoff(base, 1) <= base.mul_f64(1.5));
        assert!(backoff(base, 3) >= base * 4);
        assert!(backoff(base, 30) <= Duration::from_secs(12));
    }
}
