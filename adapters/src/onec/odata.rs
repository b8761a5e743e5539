//! 1C's standard OData v3 interface (`…/odata/standard.odata/Catalog_…`):
//! readers of JSON pages and a paging client.

use super::{
    ClientRecord, Field, Parsed, ProductRecord, Raw, RawClient, RawProduct, SourceError, Transport,
};
use serde_json::Value;

/// Products of one `Catalog_Номенклатура` page (`value` or verbose `d.results`).
pub fn parse_products_page(json: &[u8]) -> Result<Vec<Parsed<ProductRecord>>, SourceError> {
    parse_page(json, product_slot)
}

/// Clients of one `Catalog_Контрагенты` page.
pub fn parse_clients_page(json: &[u8]) -> Result<Vec<Parsed<ClientRecord>>, SourceError> {
    parse_page(json, client_slot)
}

fn product_slot<'r>(raw: &'r mut RawProduct, name: &str) -> Option<&'r mut Option<Field>> {
    Some(match name {
        "Ref_Key" => &mut raw.guid,
        "Code" => &mut raw.code,
        "Description" => &mut raw.name,
        "Артикул" => &mut raw.article,
        // A string only; the reference `ЕдиницаИзмерения_Key` is not a name.
        "ЕдиницаИзмерения" => &mut raw.unit,
        "Штрихкод" => &mut raw.barcode,
        "Цена" => &mut raw.price,
        "Parent_Key" => &mut raw.parent,
        "IsFolder" => &mut raw.is_folder,
        "DeletionMark" => &mut raw.deletion_mark,
        _ => return None,
    })
}

fn client_slot<'r>(raw: &'r mut RawClient, name: &str) -> Option<&'r mut Option<Field>> {
    Some(match name {
        "Ref_Key" => &mut raw.guid,
        "Code" => &mut raw.code,
        "Description" => &mut raw.name,
        "ИНН" => &mut raw.tax_id,
        "Телефон" => &mut raw.phone,
        "Адрес" => &mut raw.address,
        "DeletionMark" => &mut raw.deletion_mark,
        _ => return None,
    })
}

fn parse_page<R: Raw>(
    json: &[u8],
    slot: super::Slot<R>,
) -> Result<Vec<Parsed<R::Out>>, SourceError> {
    let body: Value = serde_json::from_slice(json)
        .map_err(|e| SourceError::Malformed(format!("OData answer is not JSON: {e}")))?;
    let Value::Object(mut body) = body else {
        return Err(SourceError::Malformed(
            "OData answer is not a JSON object".into(),
        ));
    };
    if let Some(error) = body.get("odata.error").or_else(|| body.get("error")) {
        return Err(odata_error(error));
    }
    let rows = match body.remove("value") {
        Some(rows) => Some(rows),
        None => body
            .remove("d")
            .and_then(|mut d| match d.get_mut("results") {
                Some(results) => Some(results.take()),
                None => d.is_array().then_some(d),
            }),
    };
    match rows {
        Some(Value::Array(rows)) => Ok(super::json_rows(rows, slot)),
        _ => Err(SourceError::Malformed(
            "OData answer has no \"value\" array".into(),
        )),
    }
}

/// `{"code": …, "message": {"value": …}}` as a fault.
fn odata_error(error: &Value) -> SourceError {
    let text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    let message = error.get("message");
    SourceError::Fault {
        code: text(error.get("code")),
        message: text(message.and_then(|m| m.get("value")).or(message)),
    }
}

/// The OData error in a body, if it is one.
fn fault(body: &[u8]) -> Option<SourceError> {
    let body: Value = serde_json::from_slice(body).ok()?;
    body.get("odata.error")
        .or_else(|| body.get("error"))
        .map(odata_error)
}

type ParsePage<T> = fn(&[u8]) -> Result<Vec<Parsed<T>>, SourceError>;

/// A 1C OData endpoint (`http://host/base/odata/standard.odata`).
pub struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    username: String,
    password: String,
    transport: Transport,
}

impl Client {
    /// An empty `username` sends no `Authorization`.
    pub fn new(
        base_url: &str,
        username: &str,
        password: &str,
        transport: Transport,
    ) -> Result<Self, SourceError> {
        let base = reqwest::Url::parse(base_url)
            .ok()
            .filter(|url| !url.cannot_be_a_base() && matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| SourceError::Transport("invalid OData base URL".into()))?;
        Ok(Self {
            http: super::http_client(&transport)?,
            base,
            username: username.to_owned(),
            password: password.to_owned(),
            transport,
        })
    }

    /// `GET {base}/{entity}?$format=json&$top={top}&$skip={skip}`, the raw
    /// body. Retries as [`super::Transport`] says; an OData error is a fault.
    pub async fn page(
        &self,
        entity: &str,
        top: usize,
        skip: usize,
    ) -> Result<Vec<u8>, SourceError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| SourceError::Transport("invalid OData base URL".into()))?
            .pop_if_empty()
            .push(entity);
        url.set_query(Some(&format!("$format=json&$top={top}&$skip={skip}")));
        let request = || {
            let request = self
                .http
                .get(url.clone())
                .header(reqwest::header::ACCEPT, "application/json");
            super::with_auth(request, &self.username, &self.password)
        };
        super::send(&self.transport, request, fault).await
    }

    /// Every product of `entity`, `page_size` rows per request.
    pub async fn all_products(
        &self,
        entity: &str,
        page_size: usize,
    ) -> Result<Vec<Parsed<ProductRecord>>, SourceError> {
        self.all(entity, page_size, parse_products_page).await
    }

    /// Every client of `entity`, `page_size` rows per request.
    pub async fn all_clients(
        &self,
        entity: &str,
        page_size: usize,
    ) -> Result<Vec<Parsed<ClientRecord>>, SourceError> {
        self.all(entity, page_size, parse_clients_page).await
    }

    /// Pages until one has fewer than `page_size` rows.
    async fn all<T>(
        &self,
        entity: &str,
        page_size: usize,
        parse: ParsePage<T>,
    ) -> Result<Vec<Parsed<T>>, SourceError> {
        let top = page_size.max(1);
        let (mut records, mut previous) = (Vec::new(), Vec::new());
        loop {
            let body = self.page(entity, top, records.len()).await?;
            let rows = parse(&body)?;
            let count = rows.len();
            if count > 0 && body == previous {
                return Err(SourceError::Malformed(format!(
                    "1C sent the same page of {entity} twice ($skip ignored?)"
                )));
            }
            records.extend(rows);
            if count < top {
                return Ok(records);
            }
            previous = body;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;

    const PAGE: &str = include_str!("testdata/odata-catalog-nomenklatura.json");

    #[test]
    fn fixture_page() {
        let parsed = parse_products_page(PAGE.as_bytes()).expect("parses");
        let expected = vec![
            ProductRecord {
                guid: "6f1c2a10-8b3e-11ee-9c1a-00155d012345".into(),
                code: "00-00000123".into(),
                name: "Чай зелёный 100 г".into(),
                article: "TEA-G-100".into(),
                unit: String::new(),
                barcode: None,
                price: Some(Decimal::new(185_000, 1)),
                parent: Some("0b7d4e20-8b3e-11ee-9c1a-00155d012345".into()),
                is_folder: false,
                deletion_mark: false,
                variant_of: None,
            },
            ProductRecord {
                guid: "0b7d4e20-8b3e-11ee-9c1a-00155d012345".into(),
                code: "00-00000001".into(),
                name: "Напитки".into(),
                article: String::new(),
                unit: String::new(),
                barcode: None,
                price: Some(Decimal::ZERO),
                parent: None,
                is_folder: true,
                deletion_mark: false,
                variant_of: None,
            },
        ];
        assert_eq!(
            parsed,
            expected.into_iter().map(Parsed::Ok).collect::<Vec<_>>()
        );
        let Parsed::Ok(tea) = &parsed[0] else {
            panic!("rejected")
        };
        assert_eq!(tea.price.expect("price").to_string(), "18500.0");
    }

    #[test]
    fn fields_numbers_and_rejections() {
        let json = r#"{"d":{"results":[
            {"Ref_Key":"a","Цена":"12.30","Штрихкод":"0478","ЕдиницаИзмерения":"кг","DeletionMark":true},
            {"Ref_Key":"b","Штрихкод":4780000000017,"ЕдиницаИзмерения":{"Description":"шт"}},
            {"Ref_Key":"c","Цена":"abc"},
            {"Ref_Key":"d","Цена":1e400},
            {"Code":"X-1","Цена":1},
            7]}}"#;
        let parsed = parse_products_page(json.as_bytes()).expect("parses");
        let Parsed::Ok(a) = &parsed[0] else {
            panic!("rejected")
        };
        assert_eq!(
            (a.price.expect("price").to_string(), a.barcode.as_deref()),
            ("12.30".into(), Some("0478"))
        );
        assert_eq!((a.unit.as_str(), a.deletion_mark), ("кг", true));
        let Parsed::Ok(b) = &parsed[1] else {
            panic!("rejected")
        };
        assert_eq!(
            (b.barcode.as_deref(), b.unit.as_str()),
            (Some("4780000000017"), "")
        );
        let rejected = |i: usize| match &parsed[i] {
            Parsed::Rejected { reference, reason } => (reference.clone(), reason.clone()),
            Parsed::Ok(r) => panic!("accepted {r:?}"),
        };
        assert_eq!(
            rejected(2),
            ("c".into(), r#"Price "abc" is not a number"#.into())
        );
        assert_eq!(
            rejected(3),
            ("d".into(), r#"Price "1e+400" is not a number"#.into())
        );
        assert_eq!(rejected(4), ("X-1".into(), "missing GUID".into()));
        assert_eq!(rejected(5), ("#6".into(), "not a JSON object".into()));
    }

    #[test]
    fn clients_page() {
        let json = r#"{"value":[{"Ref_Key":"k","Code":"K-1","Description":"OOO \"Baraka\"","ИНН":"301234567","Телефон":"","DeletionMark":false}]}"#;
        let parsed = parse_clients_page(json.as_bytes()).expect("parses");
        assert_eq!(
            parsed,
            vec![Parsed::Ok(ClientRecord {
                guid: "k".into(),
                code: "K-1".into(),
                name: r#"OOO "Baraka""#.into(),
                tax_id: Some("301234567".into()),
                phone: None,
                address: None,
                deletion_mark: false,
            })]
        );
    }

    #[test]
    fn errors() {
        let error =
            r#"{"odata.error":{"code":"-1","message":{"lang":"ru","value":"Не найден объект"}}}"#;
        assert!(matches!(
            parse_products_page(error.as_bytes()),
            Err(SourceError::Fault { ref code, ref message }) if code == "-1" && message == "Не найден объект"
        ));
        let half = &PAGE.as_bytes()[..PAGE.len() / 2];
        for bad in [half, b"[]", br#"{"value":{}}"#, b"{}"] {
            let result = parse_products_page(bad);
            assert!(
                matches!(result, Err(SourceError::Malformed(_))),
                "{result:?}"
            );
        }
    }

    mod client {
        use super::*;
        use axum::{
            Json, Router,
            extract::{Path, Query, RawQuery},
            http::{HeaderMap, StatusCode},
            response::IntoResponse,
            routing::get,
        };
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        type Seen = Arc<Mutex<Vec<(String, String, HeaderMap)>>>;

        async fn serve(router: Router) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move { axum::serve(listener, router).await });
            format!("http://{addr}/base/odata/standard.odata/")
        }

        fn transport() -> Transport {
            Transport {
                timeout: Duration::from_secs(5),
                attempts: 3,
                backoff: Duration::from_millis(1),
                ..Transport::default()
            }
        }

        #[tokio::test]
        async fn pages_until_a_short_page() {
            let seen = Seen::default();
            let log = seen.clone();
            let handler = move |Path(entity): Path<String>,
                                RawQuery(raw): RawQuery,
                                Query(query): Query<HashMap<String, String>>,
                                headers: HeaderMap| {
                let log = log.clone();
                async move {
                    log.lock()
                        .expect("lock")
                        .push((entity, raw.unwrap_or_default(), headers));
                    let number = |key: &str| {
                        query
                            .get(key)
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0)
                    };
                    let rows: Vec<_> = (0..5usize)
                        .skip(number("$skip"))
                        .take(number("$top"))
                        .map(|i| serde_json::json!({"Ref_Key": format!("g{i}"), "Description": format!("№{i}"), "Цена": 1.5}))
                        .collect();
                    Json(serde_json::json!({"odata.metadata": "x", "value": rows}))
                }
            };
            let base =
                serve(Router::new().route("/base/odata/standard.odata/{entity}", get(handler)))
                    .await;
            let client = Client::new(&base, "user", "pw", transport()).expect("client");
            let records = client
                .all_products("Catalog_Номенклатура", 2)
                .await
                .expect("ok");
            let guids: Vec<_> = records
                .iter()
                .map(|r| match r {
                    Parsed::Ok(p) => p.guid.as_str(),
                    Parsed::Rejected { .. } => panic!("rejected"),
                })
                .collect();
            assert_eq!(guids, ["g0", "g1", "g2", "g3", "g4"]);
            let seen = seen.lock().expect("lock");
            assert_eq!(seen.len(), 3);
            assert!(
                seen.iter()
                    .all(|(entity, _, _)| entity == "Catalog_Номенклатура")
            );
            let queries: Vec<_> = seen.iter().map(|(_, q, _)| q.as_str()).collect();
            assert_eq!(
                queries,
                [
                    "$format=json&$top=2&$skip=0",
                    "$format=json&$top=2&$skip=2",
                    "$format=json&$top=2&$skip=4"
                ]
            );
            assert_eq!(seen[0].2["accept"], "application/json");
            assert!(
                seen[0].2["authorization"]
                    .to_str()
                    .expect("ascii")
                    .starts_with("Basic ")
            );
        }

        #[tokio::test]
        async fn odata_error_is_a_fault_without_retry() {
            let count = Arc::new(Mutex::new(0));
            let counter = count.clone();
            let handler = move || {
                *counter.lock().expect("lock") += 1;
                let body =
                    r#"{"odata.error":{"code":"","message":{"lang":"ru","value":"Нет прав"}}}"#;
                async move { (StatusCode::FORBIDDEN, body).into_response() }
            };
            let base =
                serve(Router::new().route("/base/odata/standard.odata/{entity}", get(handler)))
                    .await;
            let client = Client::new(&base, "", "", transport()).expect("client");
            let result = client.page("Catalog_Контрагенты", 10, 0).await;
            assert!(
                matches!(result, Err(SourceError::Fault { ref message, .. }) if message == "Нет прав")
            );
            assert_eq!(*count.lock().expect("lock"), 1);
        }

        #[tokio::test]
        async fn ignored_skip_is_detected() {
            let handler = || async {
                Json(serde_json::json!({"value": [{"Ref_Key": "a"}, {"Ref_Key": "b"}]}))
            };
            let base =
                serve(Router::new().route("/base/odata/standard.odata/{entity}", get(handler)))
                    .await;
            let client = Client::new(&base, "", "", transport()).expect("client");
            let result = client.all_clients("Catalog_Контрагенты", 2).await;
            assert!(
                matches!(result, Err(SourceError::Malformed(_))),
                "{result:?}"
            );
        }
    }
}
