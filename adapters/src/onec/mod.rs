//! 1C:Enterprise sources: what a 1C catalogue looks like once read, and the
//! readers of its three shapes (SOAP web service, OData v3, CommerceML 2).
//! Pure parsing plus thin HTTP clients; no storage.

pub mod commerceml;
pub mod odata;
pub mod soap;

use rust_decimal::Decimal;

/// A 1C reference that means "none" (an empty parent, an empty unit).
pub const EMPTY_GUID: &str = "00000000-0000-0000-0000-000000000000";

/// One record of a 1C catalogue, or why it cannot be used. A rejected
/// record never stops the import; it is reported with its reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed<T> {
    Ok(T),
    Rejected {
        /// The record's GUID (or code, or position `#17` when it has none).
        reference: String,
        reason: String,
    },
}

/// A product or a folder (`Номенклатура`), as 1C sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductRecord {
    /// The 1C GUID (`GUID`, `Ref_Key`, `Ид`); for a CommerceML variant
    /// `a#b`, the part after `#`.
    pub guid: String,
    pub code: String,
    pub name: String,
    pub article: String,
    /// The unit's name (`шт`, `кг`); empty when 1C only sent a reference.
    pub unit: String,
    /// Exactly as sent (leading zeros kept); `None` when empty or absent.
    pub barcode: Option<String>,
    /// Exactly as sent (`"14250.50"` keeps its scale); `None` when absent.
    pub price: Option<Decimal>,
    /// The parent folder's GUID; `None` when empty or [`EMPTY_GUID`].
    pub parent: Option<String>,
    pub is_folder: bool,
    pub deletion_mark: bool,
    /// CommerceML `a#b`: `Some(a)`, the product this is a variant of.
    pub variant_of: Option<String>,
}

/// A counterparty (`Контрагенты`), as 1C sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRecord {
    pub guid: String,
    pub code: String,
    pub name: String,
    /// `None` when empty or absent; likewise phone and address.
    pub tax_id: Option<String>,
    pub phone: Option<String>,
    pub address: Option<String>,
    pub deletion_mark: bool,
}

/// Why a whole fetch failed (the job ends in `error` with this message).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A SOAP 1.1 `Fault`: its `faultstring` (and `faultcode`).
    #[error("1C answered with a SOAP fault ({code}): {message}")]
    Fault { code: String, message: String },
    /// An HTTP status other than 2xx without a SOAP fault in the body.
    #[error("1C answered HTTP {status}: {detail}")]
    Http { status: u16, detail: String },
    /// Connection refused, reset, DNS, TLS, after the retries.
    #[error("1C could not be reached: {0}")]
    Transport(String),
    #[error("1C did not answer within {0} s")]
    Timeout(u64),
    /// Not well-formed XML / JSON, truncated, or not the expected shape.
    #[error("1C sent a malformed answer: {0}")]
    Malformed(String),
    /// An answer longer than the transport's cap (read no further).
    #[error("1C's answer is larger than {0} bytes (settings.max_response_bytes)")]
    TooLarge(usize),
}

/// How a client talks to 1C: timeouts and retries of transport errors.
#[derive(Debug, Clone)]
pub struct Transport {
    pub timeout: std::time::Duration,
    /// Attempts for transport errors, timeouts and 502/503/504 (at least 1).
    pub attempts: u32,
    /// First back-off; doubles per attempt, with jitter.
    pub backoff: std::time::Duration,
    /// The longest answer read; a longer one fails without being read
    /// whole ([`SourceError::TooLarge`]).
    pub max_response_bytes: usize,
}

/// The default cap of one remote answer: 64 MiB.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

impl Default for Transport {
    fn default() -> Self {
        Self {
            timeout: std::time::Duration::from_secs(60),
            attempts: 4,
            backoff: std::time::Duration::from_millis(500),
            max_response_bytes: MAX_RESPONSE_BYTES,
        }
    }
}

/// Reads `response`'s body, at most `cap` bytes: a longer one (by its
/// `Content-Length`, or once more arrived) is refused without reading on.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, CappedError> {
    if response
        .content_length()
        .is_some_and(|length| length > cap as u64)
    {
        return Err(CappedError::TooLarge(cap));
    }
    // The chunks are kept as they came and joined once at the end: a
    // growing buffer would hold about twice the cap in reallocations.
    let (mut chunks, mut total) = (Vec::new(), 0usize);
    while let Some(chunk) = response.chunk().await.map_err(CappedError::Read)? {
        total += chunk.len();
        if total > cap {
            return Err(CappedError::TooLarge(cap));
        }
        chunks.push(chunk);
    }
    let mut body = Vec::with_capacity(total);
    for chunk in chunks {
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Why [`read_capped`] gave up.
#[derive(Debug)]
pub enum CappedError {
    TooLarge(usize),
    Read(reqwest::Error),
}

// ---------------------------------------------------------------------------
// Helpers shared by the readers (private to this module and its children).

/// One field as sent: XML text, or a JSON scalar (a number keeps its text).
#[derive(Debug, Clone)]
enum Field {
    Text(String),
    Number(String),
    Bool(bool),
}

impl Field {
    /// `null`, objects and arrays count as absent.
    fn from_json(value: serde_json::Value) -> Option<Self> {
        use serde_json::Value;
        match value {
            Value::String(s) => Some(Self::Text(s)),
            Value::Number(n) => Some(Self::Number(n.to_string())),
            Value::Bool(b) => Some(Self::Bool(b)),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }
}

/// Where a source puts the field called `name` of a raw record.
type Slot<R> = for<'r> fn(&'r mut R, &str) -> Option<&'r mut Option<Field>>;

/// A record collected field by field, checked by `build`.
trait Raw: Default {
    type Out;
    /// `index` is the 1-based position, the reference of a record without GUID.
    fn build(self, index: usize) -> Parsed<Self::Out>;
}

#[derive(Default)]
struct RawProduct {
    guid: Option<Field>,
    code: Option<Field>,
    name: Option<Field>,
    article: Option<Field>,
    unit: Option<Field>,
    barcode: Option<Field>,
    price: Option<Field>,
    parent: Option<Field>,
    is_folder: Option<Field>,
    deletion_mark: Option<Field>,
}

impl Raw for RawProduct {
    type Out = ProductRecord;

    fn build(self, index: usize) -> Parsed<ProductRecord> {
        let (guid, code) = (text(self.guid), text(self.code));
        if guid.is_empty() {
            return missing_guid(code, index);
        }
        let checked = (|| {
            Ok((
                decimal("Price", self.price)?,
                flag("IsFolder", self.is_folder)?,
                flag("DeletionMark", self.deletion_mark)?,
            ))
        })();
        match checked {
            Ok((price, is_folder, deletion_mark)) => Parsed::Ok(ProductRecord {
                code,
                name: text(self.name),
                article: text(self.article),
                unit: text(self.unit),
                barcode: non_empty(text(self.barcode)),
                price,
                parent: non_empty(text(self.parent)).filter(|p| p != EMPTY_GUID),
                is_folder,
                deletion_mark,
                variant_of: None,
                guid,
            }),
            Err(reason) => Parsed::Rejected {
                reference: guid,
                reason,
            },
        }
    }
}

#[derive(Default)]
struct RawClient {
    guid: Option<Field>,
    code: Option<Field>,
    name: Option<Field>,
    tax_id: Option<Field>,
    phone: Option<Field>,
    address: Option<Field>,
    deletion_mark: Option<Field>,
}

impl Raw for RawClient {
    type Out = ClientRecord;

    fn build(self, index: usize) -> Parsed<ClientRecord> {
        let (guid, code) = (text(self.guid), text(self.code));
        if guid.is_empty() {
            return missing_guid(code, index);
        }
        match flag("DeletionMark", self.deletion_mark) {
            Ok(deletion_mark) => Parsed::Ok(ClientRecord {
                code,
                name: text(self.name),
                tax_id: non_empty(text(self.tax_id)),
                phone: non_empty(text(self.phone)),
                address: non_empty(text(self.address)),
                deletion_mark,
                guid,
            }),
            Err(reason) => Parsed::Rejected {
                reference: guid,
                reason,
            },
        }
    }
}

fn missing_guid<T>(code: String, index: usize) -> Parsed<T> {
    Parsed::Rejected {
        reference: non_empty(code).unwrap_or_else(|| format!("#{index}")),
        reason: "missing GUID".into(),
    }
}

/// Records from a JSON array of objects (SOAP `return` string, OData `value`).
fn json_rows<R: Raw>(rows: Vec<serde_json::Value>, slot: Slot<R>) -> Vec<Parsed<R::Out>> {
    let build = |(i, row): (usize, serde_json::Value)| match row {
        serde_json::Value::Object(fields) => {
            let mut raw = R::default();
            for (name, value) in fields {
                if let Some(field) = slot(&mut raw, &name) {
                    *field = Field::from_json(value);
                }
            }
            raw.build(i + 1)
        }
        _ => Parsed::Rejected {
            reference: format!("#{}", i + 1),
            reason: "not a JSON object".into(),
        },
    };
    rows.into_iter().enumerate().map(build).collect()
}

/// The field's text, trimmed; empty when absent.
fn text(field: Option<Field>) -> String {
    match field {
        None => String::new(),
        Some(Field::Text(s) | Field::Number(s)) if s.trim().len() == s.len() => s,
        Some(Field::Text(s) | Field::Number(s)) => s.trim().to_owned(),
        Some(Field::Bool(b)) => b.to_string(),
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// An exact decimal; absent or empty is `None`.
fn decimal(name: &str, field: Option<Field>) -> Result<Option<Decimal>, String> {
    let s = text(field);
    if s.is_empty() {
        return Ok(None);
    }
    parse_decimal(&s)
        .map(Some)
        .ok_or_else(|| format!("{name} {s:?} is not a number"))
}

/// `18500` → 18500, `14250.50` keeps scale 2, `1.85E4` → 18500; `None` for
/// anything else (`12,5`, `abc`, `1_000`, out of range).
fn parse_decimal(s: &str) -> Option<Decimal> {
    let number_char = |b: u8| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+');
    if s.bytes().all(number_char) {
        Decimal::from_str_exact(s).ok()
    } else if s
        .bytes()
        .all(|b| number_char(b) || matches!(b, b'e' | b'E'))
    {
        Decimal::from_scientific(s).ok()
    } else {
        None
    }
}

/// `true`/`false` (also `1`/`0`, as `xs:boolean`); absent or empty is false.
fn flag(name: &str, field: Option<Field>) -> Result<bool, String> {
    match field {
        Some(Field::Bool(b)) => Ok(b),
        other => match text(other).as_str() {
            "" | "false" | "0" => Ok(false),
            "true" | "1" => Ok(true),
            s => Err(format!("{name} {s:?} is not true/false")),
        },
    }
}

/// What [`Xml::next`] yields: element names are local (prefix dropped),
/// text has entities resolved, CDATA is text, `<a/>` is `Open` + `Close`.
enum Node<'a> {
    Open(&'a str),
    Close,
    Text(std::borrow::Cow<'a, str>),
    Other,
    Eof,
}

/// The deepest element nesting a 1C document may have; deeper is refused
/// as malformed. (No reader recurses on the input's depth: the nested
/// `Группы` of CommerceML are read with a stack of their own.)
pub const MAX_XML_DEPTH: usize = 64;

/// A streaming XML reader that reports truncation and keeps one buffer.
struct Xml<R> {
    reader: quick_xml::Reader<R>,
    buf: Vec<u8>,
    name: String,
    depth: usize,
    close_pending: bool,
}

impl<R: std::io::BufRead> Xml<R> {
    fn new(source: R) -> Self {
        Self {
            reader: quick_xml::Reader::from_reader(source),
            buf: Vec::new(),
            name: String::new(),
            depth: 0,
            close_pending: false,
        }
    }

    fn next(&mut self) -> Result<Node<'_>, SourceError> {
        use quick_xml::events::Event;
        if self.close_pending {
            self.close_pending = false;
            self.depth -= 1;
            return Ok(Node::Close);
        }
        self.buf.clear();
        let reader = &mut self.reader;
        let event = reader.read_event_into(&mut self.buf).map_err(|e| {
            SourceError::Malformed(format!("{e} at byte {}", reader.error_position()))
        })?;
        let at = reader.buffer_position();
        let bad = |e: &dyn std::fmt::Display| SourceError::Malformed(format!("{e} at byte {at}"));
        Ok(match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                if self.depth >= MAX_XML_DEPTH {
                    return Err(bad(&format!(
                        "elements nested deeper than {MAX_XML_DEPTH} levels"
                    )));
                }
                self.close_pending = matches!(event, Event::Empty(_));
                self.depth += 1;
                let name = std::str::from_utf8(e.local_name().into_inner()).map_err(|e| bad(&e))?;
                self.name.clear();
                self.name.push_str(name);
                Node::Open(&self.name)
            }
            Event::End(_) => {
                self.depth = self.depth.saturating_sub(1);
                Node::Close
            }
            Event::Text(t) => Node::Text(t.xml10_content().map_err(|e| bad(&e))?),
            Event::CData(t) => Node::Text(t.decode().map_err(|e| bad(&e))?),
            Event::GeneralRef(r) => match r.resolve_char_ref().map_err(|e| bad(&e))? {
                Some(c) => Node::Text(c.to_string().into()),
                None => {
                    let name = r.decode().map_err(|e| bad(&e))?;
                    let text = quick_xml::escape::resolve_predefined_entity(&name);
                    Node::Text(
                        text.ok_or_else(|| bad(&format!("unknown entity &{name};")))?
                            .into(),
                    )
                }
            },
            Event::Eof if self.depth > 0 => {
                return Err(bad(&"the document ends inside an element (truncated?)"));
            }
            Event::Eof => Node::Eof,
            _ => Node::Other,
        })
    }

    /// The text of the element just opened, up to its end; nested elements
    /// are skipped.
    fn read_text(&mut self) -> Result<String, SourceError> {
        let (mut text, mut nested) = (String::new(), 0usize);
        loop {
            match self.next()? {
                Node::Text(t) if nested == 0 => text.push_str(&t),
                Node::Open(_) => nested += 1,
                Node::Close if nested == 0 => return Ok(text),
                Node::Close => nested -= 1,
                Node::Eof => return Ok(text),
                Node::Text(_) | Node::Other => {}
            }
        }
    }

    /// Skips the rest of the element just opened.
    fn skip(&mut self) -> Result<(), SourceError> {
        let mut nested = 0usize;
        loop {
            match self.next()? {
                Node::Open(_) => nested += 1,
                Node::Close if nested == 0 => return Ok(()),
                Node::Close => nested -= 1,
                Node::Eof => return Ok(()),
                Node::Text(_) | Node::Other => {}
            }
        }
    }

    /// Calls `f` with the local name of each child of the element just opened
    /// (of the document at the top); what `f` leaves unread of a child is skipped.
    fn children(
        &mut self,
        mut f: impl FnMut(&mut Self, &str) -> Result<(), SourceError>,
    ) -> Result<(), SourceError> {
        let mut name = String::new();
        loop {
            match self.next()? {
                Node::Open(n) => {
                    name.clear();
                    name.push_str(n);
                }
                Node::Close | Node::Eof => return Ok(()),
                Node::Text(_) | Node::Other => continue,
            }
            let depth = self.depth;
            f(self, &name)?;
            if self.depth == depth {
                self.skip()?;
            }
        }
    }
}

/// A reqwest client with the transport's timeout.
fn http_client(transport: &Transport) -> Result<reqwest::Client, SourceError> {
    reqwest::Client::builder()
        .timeout(transport.timeout)
        .build()
        .map_err(|e| request_error(e, transport))
}

/// HTTP Basic auth unless `username` is empty.
fn with_auth(
    request: reqwest::RequestBuilder,
    username: &str,
    password: &str,
) -> reqwest::RequestBuilder {
    if username.is_empty() {
        request
    } else {
        request.basic_auth(username, Some(password))
    }
}

/// Sends `request` (rebuilt per attempt) and returns the 2xx body. A fault
/// that `fault` finds in a non-2xx body is returned at once. Connection
/// errors, timeouts, 502/503/504 and 500 without a fault (1C's web server
/// also answers 500 for transient trouble) are retried `transport.attempts`
/// times in all, waiting `backoff * 2^n` plus up to 50 % jitter; any other
/// status is returned as [`SourceError::Http`] at once.
async fn send(
    transport: &Transport,
    request: impl Fn() -> reqwest::RequestBuilder,
    fault: fn(&[u8]) -> Option<SourceError>,
) -> Result<Vec<u8>, SourceError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let error = match request().send().await {
            Ok(response) => {
                let status = response.status();
                match read_capped(response, transport.max_response_bytes).await {
                    Ok(body) if status.is_success() => return Ok(body),
                    Ok(body) => {
                        if let Some(fault) = fault(&body) {
                            return Err(fault);
                        }
                        // The status names what failed; the body is the
                        // remote's and is not echoed to callers.
                        let error = SourceError::Http {
                            status: status.as_u16(),
                            detail: status.canonical_reason().unwrap_or("error").to_owned(),
                        };
                        if !matches!(status.as_u16(), 500 | 502 | 503 | 504) {
                            return Err(error);
                        }
                        error
                    }
                    Err(CappedError::TooLarge(cap)) => return Err(SourceError::TooLarge(cap)),
                    Err(CappedError::Read(e)) => request_error(e, transport),
                }
            }
            Err(e) if e.is_builder() => return Err(request_error(e, transport)),
            Err(e) => request_error(e, transport),
        };
        if attempt >= transport.attempts {
            return Err(error);
        }
        tokio::time::sleep(backoff(transport.backoff, attempt)).await;
    }
}

/// `base * 2^(attempt-1)` plus 0–50 % jitter from the clock's nanoseconds.
fn backoff(base: std::time::Duration, attempt: u32) -> std::time::Duration {
    let delay = base.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    delay.saturating_add(delay.saturating_mul(nanos % 501) / 1000)
}

/// A reqwest error as `Timeout` or `Transport`, with its causes but without
/// the URL.
fn request_error(error: reqwest::Error, transport: &Transport) -> SourceError {
    if error.is_timeout() {
        let secs = transport.timeout.as_millis().div_ceil(1000);
        return SourceError::Timeout(u64::try_from(secs).unwrap_or(u64::MAX));
    }
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    SourceError::Transport(message)
}
