//! A 1C SOAP 1.1 web service: the request envelope, a client with retries,
//! and streaming readers of `GetProductList` / `GetClientList` answers.

use super::{
    ClientRecord, Field, Node, Parsed, ProductRecord, Raw, RawClient, RawProduct, SourceError,
    Transport, Xml,
};

/// `<soap:Envelope …><soap:Body><m:{operation}/></soap:Body></soap:Envelope>`
/// with `m` bound to `namespace`.
pub fn envelope(namespace: &str, operation: &str) -> String {
    use quick_xml::escape::escape;
    format!(
        r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="{}"><soap:Body><m:{}/></soap:Body></soap:Envelope>"#,
        escape(namespace),
        escape(operation)
    )
}

/// Products from `…/return`: `Product` elements or a JSON array string.
pub fn parse_products(xml: &[u8]) -> Result<Vec<Parsed<ProductRecord>>, SourceError> {
    parse(xml, "Product", product_slot)
}

/// Clients from `…/return`: `Client` elements or a JSON array string.
pub fn parse_clients(xml: &[u8]) -> Result<Vec<Parsed<ClientRecord>>, SourceError> {
    parse(xml, "Client", client_slot)
}

fn product_slot<'r>(raw: &'r mut RawProduct, name: &str) -> Option<&'r mut Option<Field>> {
    Some(match name {
        "GUID" => &mut raw.guid,
        "Code" => &mut raw.code,
        "Description" => &mut raw.name,
        "Article" => &mut raw.article,
        "Unit" => &mut raw.unit,
        "Barcode" => &mut raw.barcode,
        "Price" => &mut raw.price,
        "ParentGUID" => &mut raw.parent,
        "IsFolder" => &mut raw.is_folder,
        "DeletionMark" => &mut raw.deletion_mark,
        _ => return None,
    })
}

fn client_slot<'r>(raw: &'r mut RawClient, name: &str) -> Option<&'r mut Option<Field>> {
    Some(match name {
        "GUID" => &mut raw.guid,
        "Code" => &mut raw.code,
        "Description" => &mut raw.name,
        "INN" => &mut raw.tax_id,
        "Phone" => &mut raw.phone,
        "Address" => &mut raw.address,
        "DeletionMark" => &mut raw.deletion_mark,
        _ => return None,
    })
}

/// Envelope → Body → (Fault | response → return → records).
fn parse<R: Raw>(
    xml: &[u8],
    element: &str,
    slot: super::Slot<R>,
) -> Result<Vec<Parsed<R::Out>>, SourceError> {
    let mut x = Xml::new(xml);
    let mut records = None;
    x.children(|x, _envelope| {
        x.children(|x, name| {
            if name == "Body" && records.is_none() {
                records = Some(read_body(x, element, slot)?);
            }
            Ok(())
        })
    })?;
    records.ok_or_else(|| SourceError::Malformed("no SOAP Body".into()))
}

fn read_body<R: Raw>(
    x: &mut Xml<&[u8]>,
    element: &str,
    slot: super::Slot<R>,
) -> Result<Vec<Parsed<R::Out>>, SourceError> {
    let mut response = None;
    x.children(|x, name| {
        if name == "Fault" {
            return Err(read_fault(x)?);
        }
        if response.is_none() {
            let mut records = None;
            x.children(|x, child| {
                if child == "return" && records.is_none() {
                    records = Some(read_return(x, element, slot)?);
                }
                Ok(())
            })?;
            let missing = || SourceError::Malformed(format!("no <return> in <{name}>"));
            response = Some(records.ok_or_else(missing)?);
        }
        Ok(())
    })?;
    response.ok_or_else(|| SourceError::Malformed("empty SOAP Body".into()))
}

fn read_fault(x: &mut Xml<&[u8]>) -> Result<SourceError, SourceError> {
    let (mut code, mut message) = (String::new(), String::new());
    x.children(|x, name| {
        match name {
            "faultcode" => code = x.read_text()?.trim().to_owned(),
            "faultstring" => message = x.read_text()?.trim().to_owned(),
            _ => {}
        }
        Ok(())
    })?;
    Ok(SourceError::Fault { code, message })
}

/// `element` children, or else the text as a JSON array of objects.
fn read_return<R: Raw>(
    x: &mut Xml<&[u8]>,
    element: &str,
    slot: super::Slot<R>,
) -> Result<Vec<Parsed<R::Out>>, SourceError> {
    let (mut records, mut text) = (Vec::new(), String::new());
    loop {
        match x.next()? {
            Node::Open(name) if name == element => {
                let mut raw = R::default();
                x.children(|x, name| {
                    if let Some(field) = slot(&mut raw, name) {
                        *field = Some(Field::Text(x.read_text()?));
                    }
                    Ok(())
                })?;
                records.push(raw.build(records.len() + 1));
            }
            Node::Open(_) => x.skip()?,
            Node::Text(t) if records.is_empty() => text.push_str(&t),
            Node::Close | Node::Eof => break,
            Node::Text(_) | Node::Other => {}
        }
    }
    let json = text.trim();
    if !records.is_empty() || json.is_empty() {
        return Ok(records);
    }
    let rows = serde_json::from_str(json)
        .map_err(|e| SourceError::Malformed(format!("<return> is not a JSON array: {e}")))?;
    Ok(super::json_rows(rows, slot))
}

/// The fault in a SOAP answer, if it is one.
fn fault(body: &[u8]) -> Option<SourceError> {
    match parse_clients(body) {
        Err(fault @ SourceError::Fault { .. }) => Some(fault),
        _ => None,
    }
}

/// A 1C web service at `url` (`http://host/base/ws/Exchange.1cws`).
pub struct Client {
    http: reqwest::Client,
    url: String,
    namespace: String,
    username: String,
    password: String,
    transport: Transport,
}

impl Client {
    /// `namespace` is the service's namespace URI; an empty `username`
    /// sends no `Authorization`.
    pub fn new(
        url: &str,
        namespace: &str,
        username: &str,
        password: &str,
        transport: Transport,
    ) -> Result<Self, SourceError> {
        reqwest::Url::parse(url)
            .map_err(|e| SourceError::Transport(format!("invalid web service URL: {e}")))?;
        Ok(Self {
            http: super::http_client(&transport)?,
            url: url.to_owned(),
            namespace: namespace.to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
            transport,
        })
    }

    /// Calls `operation` (no arguments) and returns the raw answer, for
    /// [`parse_products`] / [`parse_clients`]. Retries as [`super::Transport`]
    /// says; a SOAP fault (HTTP 500) is returned at once.
    pub async fn call(&self, operation: &str) -> Result<Vec<u8>, SourceError> {
        use reqwest::header::CONTENT_TYPE;
        let body = envelope(&self.namespace, operation);
        let action = format!("\"{}#{operation}\"", self.namespace);
        let request = || {
            let request = self
                .http
                .post(&self.url)
                .header(CONTENT_TYPE, "text/xml; charset=utf-8")
                .header("SOAPAction", &action)
                .body(body.clone());
            super::with_auth(request, &self.username, &self.password)
        };
        super::send(&self.transport, request, fault).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    const PRODUCTS: &str = include_str!("testdata/soap-get-product-list.xml");
    const CLIENTS_JSON: &str = include_str!("testdata/soap-return-json-string.xml");
    const FAULT: &str = include_str!("testdata/soap-fault.xml");

    fn ok<T: std::fmt::Debug>(parsed: &Parsed<T>) -> &T {
        match parsed {
            Parsed::Ok(record) => record,
            other => panic!("rejected: {other:?}"),
        }
    }

    fn wrap(records: &str) -> String {
        format!(
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><m:R xmlns:m="urn:x"><m:return>{records}</m:return></m:R></soap:Body></soap:Envelope>"#
        )
    }

    #[test]
    fn envelope_escapes() {
        assert_eq!(
            envelope("urn:a&b", "GetProductList"),
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:m="urn:a&amp;b"><soap:Body><m:GetProductList/></soap:Body></soap:Envelope>"#
        );
    }

    #[test]
    fn typed_products() {
        let parsed = parse_products(PRODUCTS.as_bytes()).expect("parses");
        let expected = vec![
            ProductRecord {
                guid: "6f1c2a10-8b3e-11ee-9c1a-00155d012345".into(),
                code: "00-00000123".into(),
                name: "Чай зелёный 100 г".into(),
                article: "TEA-G-100".into(),
                unit: "шт".into(),
                barcode: Some("4780000000017".into()),
                price: Some(Decimal::from(18500)),
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
                unit: "шт".into(),
                barcode: None,
                price: Some(Decimal::ZERO),
                parent: None,
                is_folder: true,
                deletion_mark: false,
                variant_of: None,
            },
            ProductRecord {
                guid: "9a0e3c55-8b3e-11ee-9c1a-00155d012345".into(),
                code: "00-00000124".into(),
                name: "Сахар 1 кг".into(),
                article: "SUG-1000".into(),
                unit: "кг".into(),
                barcode: Some("0478000000024".into()),
                price: Some(Decimal::from_str("14250.50").expect("decimal")),
                parent: None,
                is_folder: false,
                deletion_mark: true,
                variant_of: None,
            },
        ];
        assert_eq!(
            parsed,
            expected.into_iter().map(Parsed::Ok).collect::<Vec<_>>()
        );
        assert_eq!(ok(&parsed[2]).price.expect("price").to_string(), "14250.50");
        assert_eq!(ok(&parsed[0]).price.expect("price").to_string(), "18500");
    }

    #[test]
    fn json_clients() {
        let parsed = parse_clients(CLIENTS_JSON.as_bytes()).expect("parses");
        let expected = vec![
            ClientRecord {
                guid: "c1a2b3c4-8b3e-11ee-9c1a-00155d0a0001".into(),
                code: "K-0001".into(),
                name: r#"OOO "Baraka Savdo""#.into(),
                tax_id: Some("301234567".into()),
                phone: Some("+998901234567".into()),
                address: Some("Toshkent sh., Chilonzor t.".into()),
                deletion_mark: false,
            },
            ClientRecord {
                guid: "c1a2b3c4-8b3e-11ee-9c1a-00155d0a0002".into(),
                code: "K-0002".into(),
                name: "YaTT Karimov A.".into(),
                tax_id: None,
                phone: Some("+998935550011".into()),
                address: Some("Navoiy sh.".into()),
                deletion_mark: false,
            },
        ];
        assert_eq!(
            parsed,
            expected.into_iter().map(Parsed::Ok).collect::<Vec<_>>()
        );
    }

    #[test]
    fn json_products_numbers_strings_and_rejections() {
        let json = r#"[{"GUID":"a","Price":18500.0,"IsFolder":"false","DeletionMark":true,"Barcode":"007"},
            {"GUID":"b","Price":"14250.50"},{"GUID":"c","Price":"abc"},{"Code":"K-9"},{},
            {"GUID":"d","Price":1e400},{"GUID":"e","IsFolder":"yes"},{"GUID":"f","Price":1.85E4}]"#;
        let xml = wrap(&json.replace('&', "&amp;").replace('"', "&quot;"));
        let parsed = parse_products(xml.as_bytes()).expect("parses");
        assert_eq!(parsed.len(), 8);
        let a = ok(&parsed[0]);
        assert_eq!(a.price.expect("price").to_string(), "18500.0");
        assert!(a.deletion_mark && !a.is_folder);
        assert_eq!(a.barcode.as_deref(), Some("007"));
        assert_eq!(ok(&parsed[1]).price.expect("price").to_string(), "14250.50");
        let rejected = |i: usize| match &parsed[i] {
            Parsed::Rejected { reference, reason } => (reference.as_str(), reason.as_str()),
            Parsed::Ok(r) => panic!("accepted {r:?}"),
        };
        assert_eq!(rejected(2), ("c", r#"Price "abc" is not a number"#));
        assert_eq!(rejected(3), ("K-9", "missing GUID"));
        assert_eq!(rejected(4), ("#5", "missing GUID"));
        assert_eq!(rejected(5), ("d", r#"Price "1e+400" is not a number"#));
        assert_eq!(rejected(6), ("e", r#"IsFolder "yes" is not true/false"#));
        assert_eq!(ok(&parsed[7]).price, Some(Decimal::from(18500)));
    }

    #[test]
    fn fault_is_an_error() {
        match parse_products(FAULT.as_bytes()) {
            Err(SourceError::Fault { code, message }) => {
                assert_eq!(code, "soap:Server");
                assert_eq!(
                    message,
                    "Ошибка при вызове метода контекста (ВыполнитьЗапрос): недостаточно прав"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_and_wrong_shapes_are_malformed() {
        let half = &PRODUCTS.as_bytes()[..PRODUCTS.len() / 2];
        for xml in [
            half,
            &PRODUCTS.as_bytes()[..PRODUCTS.len() - 20],
            b"<a><b></a>",
            b"",
            b"<soap:Envelope xmlns:soap=\"x\"/>",
            b"<Envelope><Body/></Envelope>",
            b"<Envelope><Body><R><other/></R></Body></Envelope>",
            b"<Envelope><Body><R><return>[{]</return></R></Body></Envelope>",
            b"<Envelope><Body><R><return>&bogus;</return></R></Body></Envelope>",
        ] {
            assert!(
                matches!(parse_products(xml), Err(SourceError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(xml)
            );
        }
        let Err(SourceError::Malformed(message)) = parse_products(half) else {
            panic!("not malformed");
        };
        assert!(message.contains("byte"), "{message}");
    }

    #[test]
    fn bad_price_rejects_only_that_record() {
        let xml = PRODUCTS.replacen(">18500<", ">12,5x<", 1);
        let parsed = parse_products(xml.as_bytes()).expect("parses");
        assert_eq!(
            parsed[0],
            Parsed::Rejected {
                reference: "6f1c2a10-8b3e-11ee-9c1a-00155d012345".into(),
                reason: r#"Price "12,5x" is not a number"#.into()
            }
        );
        assert!(matches!(parsed[1], Parsed::Ok(_)) && matches!(parsed[2], Parsed::Ok(_)));
    }

    #[test]
    fn entities_cdata_empty_return_and_extra_elements() {
        let xml = wrap(
            "<Product><GUID>g</GUID><Description>A &amp; B &quot;q&quot; &#1063;&#x44F;</Description>\
             <Article><![CDATA[<x> & y]]></Article><Extra><Deep>1</Deep></Extra><Unit/></Product>",
        );
        let parsed = parse_products(xml.as_bytes()).expect("parses");
        let p = ok(&parsed[0]);
        assert_eq!(p.name, r#"A & B "q" Чя"#);
        assert_eq!(p.article, "<x> & y");
        assert_eq!((p.unit.as_str(), p.price), ("", None));
        assert!(
            parse_products(wrap("").as_bytes())
                .expect("parses")
                .is_empty()
        );
        let empty = PRODUCTS.replace(
            r#"<m:return xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">"#,
            "<m:return/><m:ignored>",
        );
        let empty = empty.replace("</m:return>", "</m:ignored>");
        assert!(parse_products(empty.as_bytes()).expect("parses").is_empty());
    }

    #[test]
    fn hundred_thousand_products() {
        let mut records = String::with_capacity(50_000_000);
        for i in 0..100_000 {
            records.push_str(&format!(
                "<m:Product><m:GUID>{i:08x}-8b3e-11ee-9c1a-00155d012345</m:GUID><m:Code>00-{i:08}</m:Code>\
                 <m:Description>Товар номер {i} с довольно длинным наименованием для объёма</m:Description>\
                 <m:Article>ART-{i}</m:Article><m:Unit code=\"796\">шт</m:Unit><m:Barcode>{:013}</m:Barcode>\
                 <m:Price currency=\"UZS\">{i}.50</m:Price><m:ParentGUID>{}</m:ParentGUID>\
                 <m:IsFolder>false</m:IsFolder><m:DeletionMark>false</m:DeletionMark></m:Product>\n",
                4_780_000_000_000u64 + i,
                super::super::EMPTY_GUID,
            ));
        }
        let xml = wrap(&records);
        let parsed = parse_products(xml.as_bytes()).expect("parses");
        assert_eq!(parsed.len(), 100_000);
        assert!(parsed.iter().all(|p| matches!(p, Parsed::Ok(_))));
        assert_eq!(
            ok(&parsed[99_999]).price.expect("price").to_string(),
            "99999.50"
        );
    }

    mod client {
        use super::*;
        use axum::{Router, body::Bytes, http::HeaderMap, http::StatusCode, routing::post};
        use base64::Engine;
        use std::sync::{Arc, Mutex};
        use std::time::Duration;

        type Seen = Arc<Mutex<Vec<(HeaderMap, String)>>>;

        async fn serve(router: Router) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move { axum::serve(listener, router).await });
            format!("http://{addr}/base/ws/Exchange.1cws")
        }

        /// Answers with `answers[n]` (the last one repeats) and records requests.
        async fn server(answers: Vec<(StatusCode, &'static str)>) -> (String, Seen) {
            let seen = Seen::default();
            let log = seen.clone();
            let handler = move |headers: HeaderMap, body: Bytes| {
                let log = log.clone();
                let answers = answers.clone();
                async move {
                    let mut log = log.lock().expect("lock");
                    log.push((headers, String::from_utf8_lossy(&body).into_owned()));
                    answers[(log.len() - 1).min(answers.len() - 1)]
                }
            };
            (
                serve(Router::new().route("/base/ws/Exchange.1cws", post(handler))).await,
                seen,
            )
        }

        fn transport(timeout_ms: u64) -> Transport {
            Transport {
                timeout: Duration::from_millis(timeout_ms),
                attempts: 3,
                backoff: Duration::from_millis(1),
                ..Transport::default()
            }
        }

        fn client(url: &str, transport: Transport) -> Client {
            Client::new(
                url,
                "http://erp.example.uz/exchange",
                "Админ",
                "s3cret",
                transport,
            )
            .expect("client")
        }

        #[tokio::test]
        async fn happy_path_sends_soap_headers_and_basic_auth() {
            let (url, seen) = server(vec![(StatusCode::OK, PRODUCTS)]).await;
            let body = client(&url, transport(5000))
                .call("GetProductList")
                .await
                .expect("ok");
            assert_eq!(parse_products(&body).expect("parses").len(), 3);
            let seen = seen.lock().expect("lock");
            let (headers, request) = &seen[0];
            assert_eq!(
                headers["soapaction"],
                "\"http://erp.example.uz/exchange#GetProductList\""
            );
            assert_eq!(headers["content-type"], "text/xml; charset=utf-8");
            let auth = headers["authorization"].to_str().expect("ascii");
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.strip_prefix("Basic ").expect("basic"))
                .expect("base64");
            assert_eq!(String::from_utf8(decoded).expect("utf8"), "Админ:s3cret");
            assert_eq!(
                request,
                &envelope("http://erp.example.uz/exchange", "GetProductList")
            );
        }

        #[tokio::test]
        async fn fault_with_500_is_not_retried() {
            let (url, seen) = server(vec![(StatusCode::INTERNAL_SERVER_ERROR, FAULT)]).await;
            let result = client(&url, transport(5000)).call("GetProductList").await;
            assert!(
                matches!(result, Err(SourceError::Fault { ref code, .. }) if code == "soap:Server")
            );
            assert_eq!(seen.lock().expect("lock").len(), 1);
        }

        #[tokio::test]
        async fn unavailable_twice_then_ok() {
            let unavailable = (StatusCode::SERVICE_UNAVAILABLE, "busy");
            let (url, seen) =
                server(vec![unavailable, unavailable, (StatusCode::OK, PRODUCTS)]).await;
            let body = client(&url, transport(5000))
                .call("GetProductList")
                .await
                .expect("ok");
            assert_eq!(parse_products(&body).expect("parses").len(), 3);
            assert_eq!(seen.lock().expect("lock").len(), 3);
        }

        #[tokio::test]
        async fn html_500_is_retried_then_reported_and_401_is_not() {
            let (url, seen) = server(vec![(
                StatusCode::INTERNAL_SERVER_ERROR,
                "  <html>oops</html>\n",
            )])
            .await;
            let result = client(&url, transport(5000)).call("GetProductList").await;
            // The status names what failed; the remote's body is not echoed.
            assert!(
                matches!(result, Err(SourceError::Http { status: 500, ref detail }) if detail == "Internal Server Error"),
                "{result:?}"
            );
            assert_eq!(seen.lock().expect("lock").len(), 3);

            let (url, seen) = server(vec![(StatusCode::UNAUTHORIZED, "")]).await;
            let result = client(&url, transport(5000)).call("GetProductList").await;
            let Err(error) = result else {
                panic!("accepted")
            };
            assert!(matches!(error, SourceError::Http { status: 401, .. }));
            assert!(!error.to_string().contains("s3cret"));
            assert_eq!(seen.lock().expect("lock").len(), 1);
        }

        #[tokio::test]
        async fn slow_answer_times_out() {
            let slow = || async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                PRODUCTS
            };
            let url = serve(Router::new().route("/base/ws/Exchange.1cws", post(slow))).await;
            let transport = Transport {
                attempts: 1,
                ..transport(200)
            };
            let result = client(&url, transport).call("GetProductList").await;
            assert!(matches!(result, Err(SourceError::Timeout(_))), "{result:?}");
        }

        #[tokio::test]
        async fn refused_connection_is_a_transport_error() {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let url = format!("http://{}/ws", listener.local_addr().expect("addr"));
            drop(listener);
            let result = client(&url, transport(1000)).call("GetProductList").await;
            let Err(SourceError::Transport(message)) = result else {
                panic!("{result:?}")
            };
            assert!(!message.contains("s3cret"));
        }
    }

    #[test]
    fn deep_nesting_in_an_answer_is_malformed() {
        let deep = wrap(&format!(
            "{}{}",
            "<Product><Parent>".repeat(10_000),
            "</Parent></Product>".repeat(10_000)
        ));
        assert!(matches!(
            parse_products(deep.as_bytes()),
            Err(SourceError::Malformed(why)) if why.contains("nested deeper")
        ));
        assert!(matches!(
            parse_clients(deep.as_bytes()),
            Err(SourceError::Malformed(_))
        ));
    }

    proptest::proptest! {
        /// Random element soup inside a SOAP answer, at any depth, never
        /// panics either reader.
        #[test]
        fn arbitrary_answers_never_panic(
            path in proptest::collection::vec(0usize..5, 0..300),
            text in "[a-zA-Z0-9 \\[\\]{}\":,<>&;]{0,16}",
        ) {
            const NAMES: [&str; 5] = ["Product", "Client", "GUID", "return", "Price"];
            let mut inner = String::new();
            for &i in &path {
                inner.push_str(&format!("<{}>{text}", NAMES[i]));
            }
            for &i in path.iter().rev() {
                inner.push_str(&format!("</{}>", NAMES[i]));
            }
            let xml = wrap(&inner);
            let _ = parse_products(xml.as_bytes());
            let _ = parse_clients(xml.as_bytes());
        }
    }
}
