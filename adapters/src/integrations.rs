//! The integration registry (SPEC §3 "Integrations"): which external
//! systems a tenant connects (1C, REGOS, Acrel, third-party webhooks), with
//! their settings and secrets. This is configuration, not an event-sourced
//! aggregate: one plain row per integration in `integrations`.
//!
//! - [`validate`] checks a kind's settings and secrets and fills defaults;
//! - [`SecretsKey`] seals each secret value with ChaCha20-Poly1305 (a random
//!   nonce per value; the integration id and secret name are the associated
//!   data, so a ciphertext cannot be moved to another row or name);
//! - [`verify_signature`] checks Standard Webhooks signatures over the raw
//!   body; [`IpAllowlist`] checks the sender's address against
//!   `settings.ip_allowlist`; [`record_delivery`] remembers applied webhook
//!   ids and [`prune_deliveries`] forgets them after the retention.
//!
//! Secrets never leave this module in plain text except through
//! [`SecretsKey::open`], and nothing here logs them.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, ChaCha20Poly1305, Key, Nonce};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::StorageError;
use crate::db::{Db, Portable, on_pool};

/// The kinds the registry accepts.
pub const KINDS: [&str; 5] = ["1c_soap", "1c_odata", "regos", "acrel", "webhook_source"];

/// How far a webhook timestamp may be from now, either way.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

// ---------------------------------------------------------------------------
// Kinds: settings and secrets

enum Expect {
    /// A non-empty string.
    Text,
    /// A positive integer.
    Count,
    /// A size in bytes, 1 KiB to 1 GiB.
    Bytes,
    /// A list of IP addresses (`203.0.113.7`, `2001:db8::1`) or CIDR
    /// ranges (`203.0.113.0/24`).
    IpRanges,
    /// A list of `whsec_…` signing secrets (at least one).
    SigningSecrets,
    /// A local time of day, `HH:MM`.
    TimeOfDay,
    /// An object of non-empty strings (`{"1": "B1"}`).
    TextMap,
    /// `true` or `false`.
    Flag,
    /// An `http://` or `https://` URL with a host and no `user:password@`.
    HttpUrl,
    /// An `mqtt://` or `mqtts://` broker URL (see [`Broker::parse`]).
    MqttUrl,
    /// One or more plain MQTT topic levels (see [`check_topic_prefix`]).
    TopicPrefix,
}

struct Field {
    name: &'static str,
    expect: Expect,
    /// `None`: required; `Some(Value::Null)`: optional without default.
    default: Option<fn() -> Value>,
}

const fn required(name: &'static str, expect: Expect) -> Field {
    Field {
        name,
        expect,
        default: None,
    }
}

const fn optional(name: &'static str, expect: Expect, default: fn() -> Value) -> Field {
    Field {
        name,
        expect,
        default: Some(default),
    }
}

fn none() -> Value {
    Value::Null
}

fn schema(kind: &str) -> Option<(Vec<Field>, Vec<Field>)> {
    use Expect::*;
    Some(match kind {
        "1c_soap" => (
            vec![
                required("url", HttpUrl),
                required("namespace", Text),
                optional("products_operation", Text, || "GetProductList".into()),
                optional("clients_operation", Text, || "GetClientList".into()),
                optional("chunk_size", Count, || 100.into()),
                optional("price_type", Text, none),
                optional("timeout_secs", Count, none),
                optional("max_response_bytes", Bytes, none),
            ],
            vec![required("username", Text), required("password", Text)],
        ),
        "1c_odata" => (
            vec![
                required("base_url", HttpUrl),
                optional("products_entity", Text, || "Catalog_Номенклатура".into()),
                optional("clients_entity", Text, || "Catalog_Контрагенты".into()),
                optional("page_size", Count, || 100.into()),
                optional("price_type", Text, none),
                optional("timeout_secs", Count, none),
                optional("max_response_bytes", Bytes, none),
            ],
            vec![required("username", Text), required("password", Text)],
        ),
        "regos" => (
            vec![
                required("base_url", HttpUrl),
                required("connected_integration_id", Text),
                optional("sync_time", TimeOfDay, || "03:00".into()),
                optional("branch_map", TextMap, none),
                optional("chunk_size", Count, || 100.into()),
                optional("requests_per_second", Count, none),
                optional("sales_source", Text, || "cheques".into()),
                optional("client_rate_limit", Flag, || true.into()),
                optional("max_response_bytes", Bytes, none),
            ],
            vec![required("integration_key", Text)],
        ),
        "acrel" => (
            vec![
                required("mqtt_url", MqttUrl),
                optional("topic_prefix", TopicPrefix, || "acrel".into()),
                optional("ip_allowlist", IpRanges, none),
                optional("relay_timeout_secs", Count, || 120.into()),
                optional("offline_after_secs", Count, || 3600.into()),
            ],
            vec![
                required("signing_secrets", SigningSecrets),
                optional("mqtt_username", Text, none),
                optional("mqtt_password", Text, none),
            ],
        ),
        "webhook_source" => (
            vec![optional("ip_allowlist", IpRanges, none)],
            vec![required("signing_secrets", SigningSecrets)],
        ),
        _ => return None,
    })
}

/// Checks `settings` and `secrets` of `kind`; answers the settings with
/// defaults filled in. The message names the kind and the field.
pub fn validate(
    kind: &str,
    settings: &Map<String, Value>,
    secrets: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let settings = validate_settings(kind, settings)?;
    let (_, secret_fields) = known(kind)?;
    check(kind, "secrets", &secret_fields, secrets)?;
    Ok(settings)
}

/// Checks `settings` of `kind` alone (the secrets stay as stored); answers
/// them with defaults filled in.
pub fn validate_settings(
    kind: &str,
    settings: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let (setting_fields, _) = known(kind)?;
    check(kind, "settings", &setting_fields, settings)
}

fn known(kind: &str) -> Result<(Vec<Field>, Vec<Field>), String> {
    schema(kind).ok_or_else(|| {
        format!(
            "unknown integration kind {kind:?} (known: {})",
            KINDS.join(", ")
        )
    })
}

fn check(
    kind: &str,
    part: &str,
    fields: &[Field],
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    if let Some(unknown) = given
        .keys()
        .find(|key| !fields.iter().any(|field| field.name == key.as_str()))
    {
        let known: Vec<&str> = fields.iter().map(|field| field.name).collect();
        return Err(format!(
            "{kind}: unknown {part} key {unknown:?} (known: {})",
            known.join(", ")
        ));
    }
    let mut out = Map::new();
    for field in fields {
        let value = match (given.get(field.name), field.default) {
            (Some(Value::Null) | None, None) => {
                return Err(format!("{kind}: {part}.{} is required", field.name));
            }
            (Some(Value::Null) | None, Some(default)) => default(),
            (Some(value), _) => {
                check_value(&field.expect, value)
                    .map_err(|why| format!("{kind}: {part}.{} {why}", field.name))?;
                value.clone()
            }
        };
        if !value.is_null() {
            out.insert(field.name.to_string(), value);
        }
    }
    Ok(out)
}

fn check_value(expect: &Expect, value: &Value) -> Result<(), String> {
    match expect {
        Expect::Text => match value.as_str() {
            Some(text) if !text.trim().is_empty() && text.len() <= 2048 => Ok(()),
            _ => Err("must be a non-empty string of at most 2048 bytes".into()),
        },
        Expect::Count => match value.as_u64() {
            Some(count) if (1..=1_000_000).contains(&count) => Ok(()),
            _ => Err("must be an integer from 1 to 1000000".into()),
        },
        Expect::Bytes => match value.as_u64() {
            Some(bytes) if (1024..=1 << 30).contains(&bytes) => Ok(()),
            _ => Err("must be a number of bytes from 1024 to 1073741824".into()),
        },
        Expect::IpRanges => match value.as_array() {
            Some(items) if items.len() <= 256 => {
                for item in items {
                    let text = item.as_str().ok_or("must hold strings")?;
                    ip_range(text).ok_or_else(|| {
                        format!("holds {text:?}, which is neither an IP address nor a CIDR range")
                    })?;
                }
                Ok(())
            }
            _ => Err("must be a list of at most 256 IP addresses or CIDR ranges".into()),
        },
        Expect::Flag => match value {
            Value::Bool(_) => Ok(()),
            _ => Err("must be true or false".into()),
        },
        Expect::HttpUrl => {
            let text = short_text(value)?;
            let url = url::Url::parse(text).map_err(|error| format!("is not a URL ({error})"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err("must be an http:// or https:// URL".into());
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err("names no host".into());
            }
            no_userinfo(&url)
        }
        Expect::MqttUrl => Broker::parse(short_text(value)?).map(|_| ()),
        Expect::TopicPrefix => check_topic_prefix(short_text(value)?),
        Expect::TimeOfDay => match value.as_str() {
            Some(text) if chrono::NaiveTime::parse_from_str(text, "%H:%M").is_ok() => Ok(()),
            _ => Err("must be a local time of day as HH:MM".into()),
        },
        Expect::TextMap => match value.as_object() {
            Some(map)
                if map.len() <= 10_000
                    && map.values().all(|value| {
                        value
                            .as_str()
                            .is_some_and(|text| !text.trim().is_empty() && text.len() <= 64)
                    }) =>
            {
                Ok(())
            }
            _ => Err("must be an object whose values are non-empty strings".into()),
        },
        Expect::SigningSecrets => match value.as_array() {
            Some(items) if !items.is_empty() && items.len() <= 10 => {
                for item in items {
                    let text = item.as_str().ok_or("must hold strings")?;
                    signing_key(text)?;
                }
                Ok(())
            }
            _ => Err("must be a list of 1 to 10 `whsec_…` secrets".into()),
        },
    }
}

fn short_text(value: &Value) -> Result<&str, String> {
    match value.as_str() {
        Some(text) if !text.trim().is_empty() && text.len() <= 2048 => Ok(text.trim()),
        _ => Err("must be a non-empty string of at most 2048 bytes".into()),
    }
}

/// URL settings carry no credentials: they are listed to every admin and
/// would be sent instead of the sealed secrets.
fn no_userinfo(url: &url::Url) -> Result<(), String> {
    if url.username().is_empty() && url.password().is_none() {
        Ok(())
    } else {
        Err("must not hold `user:password@` (credentials go in `secrets`)".into())
    }
}

/// `text` with any `user:password@` of a URL replaced by `***@`.
pub fn without_userinfo(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_password(None);
            let _ = url.set_username("***");
            url.to_string()
        }
        _ => text.to_string(),
    }
}

/// An MQTT broker as an `acrel` integration's `mqtt_url` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// The host, lower case (an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS (rustls, the system's roots).
    pub tls: bool,
}

impl Broker {
    /// `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883); `tcp://`
    /// and `ssl://` are accepted as their synonyms. No credentials, path or
    /// query.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text.trim())
            .map_err(|error| format!("is not a broker URL such as mqtt://host:1883 ({error})"))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => {
                return Err(format!(
                    "has scheme {other:?}; use mqtt:// or mqtts:// (TLS)"
                ));
            }
        };
        no_userinfo(&url)?;
        let host = match url.host() {
            Some(url::Host::Domain(name)) if !name.is_empty() => name.to_ascii_lowercase(),
            Some(url::Host::Ipv4(address)) => address.to_string(),
            Some(url::Host::Ipv6(address)) => address.to_string(),
            _ => return Err("names no host".into()),
        };
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err("must name only a broker (no path or query)".into());
        }
        let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
        Ok(Broker { host, port, tls })
    }

    /// `host:port`, what two integrations share when they share a broker.
    pub fn address(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }
}

/// A topic prefix is one or more plain topic levels: no wildcard (`+`,
/// `#`), no empty level (so no leading, trailing or double `/`), no NUL,
/// and not a `$` system topic.
pub fn check_topic_prefix(prefix: &str) -> Result<(), String> {
    if prefix.len() > 256 {
        return Err("must be at most 256 bytes".into());
    }
    if prefix.starts_with('$') {
        return Err("must not name a `$` system topic".into());
    }
    for level in prefix.split('/') {
        if level.is_empty() {
            return Err("must be plain topic levels without an empty level (no leading, trailing or double `/`)".into());
        }
        if level.contains(['+', '#', '\0']) {
            return Err("must not hold the wildcards `+` or `#`".into());
        }
    }
    Ok(())
}

/// Whether two topic prefixes share a topic: one's levels begin the other's.
pub fn prefixes_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long == short
        || long
            .strip_prefix(short)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The broker and topic prefix an `acrel` integration's settings claim;
/// `None` for settings that name no usable broker.
pub fn mqtt_topics(settings: &Value) -> Option<(Broker, String)> {
    let broker = Broker::parse(settings.get("mqtt_url")?.as_str()?).ok()?;
    let prefix = settings
        .get("topic_prefix")
        .and_then(Value::as_str)
        .unwrap_or("acrel")
        .trim()
        .trim_end_matches('/')
        .to_string();
    Some((broker, prefix))
}

/// Whether the topics of `a` and `b` (acrel settings) overlap on one broker.
pub fn topics_collide(a: &Value, b: &Value) -> bool {
    match (mqtt_topics(a), mqtt_topics(b)) {
        (Some((broker_a, prefix_a)), Some((broker_b, prefix_b))) => {
            broker_a.address() == broker_b.address() && prefixes_overlap(&prefix_a, &prefix_b)
        }
        _ => false,
    }
}

/// The HMAC key of a Standard Webhooks secret: `whsec_` + base64 of 24–64
/// random bytes (the prefix is optional).
pub fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| "must be `whsec_` followed by base64".to_string())?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "must encode 24 to 64 bytes (this one has {})",
            key.len()
        ));
    }
    Ok(key)
}

// ---------------------------------------------------------------------------
// Secrets at rest

/// The 32-byte key that seals integration secrets. `Debug` never shows it.
#[derive(Clone)]
pub struct SecretsKey([u8; 32]);

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(<redacted>)")
    }
}

impl SecretsKey {
    /// 64 hex digits, or base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|error| error.to_string())?
        } else {
            STANDARD
                .decode(text)
                .map_err(|_| "must be 64 hex digits or base64 of 32 bytes".to_string())?
        };
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|bytes: Vec<u8>| format!("must be 32 bytes (this one has {})", bytes.len()))?;
        Ok(Self(key))
    }

    pub fn generate() -> Self {
        Self(ChaCha20Poly1305::generate_key(&mut OsRng).into())
    }

    /// Reads the key file at `path`, or creates it (mode 0600) with a new
    /// key. The file holds the key as hex.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                return Self::parse(&text).map_err(|why| format!("{}: {why}", path.display()));
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(format!("reading {}: {error}", path.display())),
        }
        let key = Self::generate();
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|error| format!("creating {}: {error}", dir.display()))?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut file) => {
                use std::io::Write;
                file.write_all(hex::encode(key.0).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|error| format!("writing {}: {error}", path.display()))?;
                Ok(key)
            }
            // Another process made it first: use theirs.
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| format!("reading {}: {error}", path.display()))?;
                Self::parse(&text).map_err(|why| format!("{}: {why}", path.display()))
            }
            Err(error) => Err(format!("creating {}: {error}", path.display())),
        }
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    /// Seals each secret (its JSON text) as base64 of nonce ‖ ciphertext.
    pub fn seal(
        &self,
        integration_id: Uuid,
        secrets: &Map<String, Value>,
    ) -> Result<Map<String, Value>, StorageError> {
        let cipher = self.cipher();
        secrets
            .iter()
            .map(|(name, value)| {
                let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
                let aad = associated_data(integration_id, name);
                let plain = value.to_string();
                let sealed = cipher
                    .encrypt(
                        &nonce,
                        Payload {
                            msg: plain.as_bytes(),
                            aad: &aad,
                        },
                    )
                    .map_err(|_| StorageError::Config("sealing a secret failed".into()))?;
                let mut bytes = nonce.to_vec();
                bytes.extend_from_slice(&sealed);
                Ok((name.clone(), Value::String(STANDARD.encode(bytes))))
            })
            .collect()
    }

    /// Opens what [`Self::seal`] sealed for the same integration.
    pub fn open(
        &self,
        integration_id: Uuid,
        sealed: &Map<String, Value>,
    ) -> Result<Map<String, Value>, StorageError> {
        let cipher = self.cipher();
        let corrupt = |name: &str| {
            StorageError::Corrupt(format!(
                "secret {name:?} of integration {integration_id} does not open with this key"
            ))
        };
        sealed
            .iter()
            .map(|(name, value)| {
                let bytes = value
                    .as_str()
                    .and_then(|text| STANDARD.decode(text).ok())
                    .filter(|bytes| bytes.len() > 12)
                    .ok_or_else(|| corrupt(name))?;
                let (nonce, sealed) = bytes.split_at(12);
                let aad = associated_data(integration_id, name);
                let plain = cipher
                    .decrypt(
                        Nonce::from_slice(nonce),
                        Payload {
                            msg: sealed,
                            aad: &aad,
                        },
                    )
                    .map_err(|_| corrupt(name))?;
                let value = serde_json::from_slice(&plain).map_err(|_| corrupt(name))?;
                Ok((name.clone(), value))
            })
            .collect()
    }
}

fn associated_data(integration_id: Uuid, name: &str) -> Vec<u8> {
    format!("karvon:integration:{integration_id}:{name}").into_bytes()
}

// ---------------------------------------------------------------------------
// Standard Webhooks signatures

/// Why a webhook's signature was refused (the detail is for logs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("webhook-timestamp is not an integer")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches")]
    NoMatch,
}

/// `v1,<base64>` of HMAC-SHA256 over `"{id}.{timestamp}.{body}"`.
pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    format!("v1,{}", STANDARD.encode(mac(key, id, timestamp, body)))
}

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    #[allow(clippy::expect_used)]
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Checks a Standard Webhooks delivery: the timestamp within
/// [`TIMESTAMP_TOLERANCE_SECS`] of `now` (either way), and any `v1,`
/// entry of the space-separated `signatures` matching any of `keys`
/// (constant-time comparison).
pub fn verify_signature(
    keys: &[Vec<u8>],
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let at: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    // Checked: a timestamp near i64::MIN or MAX must not wrap into "fresh".
    let off = now.checked_sub(at).and_then(i64::checked_abs);
    if off.is_none_or(|off| off > TIMESTAMP_TOLERANCE_SECS) {
        return Err(SignatureError::Stale);
    }
    let given: Vec<Vec<u8>> = signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .collect();
    let mut matched = false;
    for key in keys {
        let expected = mac(key, id, timestamp, body);
        for signature in &given {
            matched |= bool::from(expected.ct_eq(signature));
        }
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

// ---------------------------------------------------------------------------
// IP allow-lists

/// An address (a range of one) or a CIDR range, as `ip_allowlist` holds them.
fn ip_range(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// The addresses an integration accepts deliveries from
/// (`settings.ip_allowlist`). No list, or an empty one, accepts every
/// address; otherwise only addresses inside one of its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAllowlist {
    ranges: Vec<IpNet>,
    /// Entries that did not parse (stored before they were checked): they
    /// match nothing, so a list of only such entries accepts nobody.
    unreadable: usize,
}

impl IpAllowlist {
    /// The allow-list of an integration's settings; `None` when it has none
    /// (or an empty one).
    pub fn of(settings: &Value) -> Option<Self> {
        let entries = settings.get("ip_allowlist")?.as_array()?;
        if entries.is_empty() {
            return None;
        }
        let ranges: Vec<IpNet> = entries
            .iter()
            .filter_map(|entry| entry.as_str().and_then(ip_range))
            .collect();
        Some(Self {
            unreadable: entries.len() - ranges.len(),
            ranges,
        })
    }

    /// Whether `peer` (the connection's address; `None` when the server
    /// does not know it) may deliver. An unknown peer never may.
    pub fn allows(&self, peer: Option<IpAddr>) -> bool {
        // An IPv4 client of a dual-stack listener shows as `::ffff:a.b.c.d`.
        let Some(peer) = peer.map(|peer| peer.to_canonical()) else {
            return false;
        };
        self.ranges.iter().any(|range| range.contains(&peer))
    }

    /// Entries that are not addresses or ranges (they match nothing).
    pub fn unreadable(&self) -> usize {
        self.unreadable
    }
}

// ---------------------------------------------------------------------------
// Storage

pub struct NewIntegration<'a> {
    pub integration_id: Uuid,
    pub tenant_id: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub settings: &'a Map<String, Value>,
    /// Already sealed.
    pub secrets: &'a Map<String, Value>,
}

/// Why a registration or replacement was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Another tenant's `acrel` integration listens on the same broker to
    /// the same or an overlapping topic prefix.
    #[error(
        "topic prefix {prefix:?} on broker {broker} overlaps another tenant's integration; choose another prefix"
    )]
    TopicTaken { broker: String, prefix: String },
}

impl From<sqlx::Error> for RegistryError {
    fn from(error: sqlx::Error) -> Self {
        RegistryError::Storage(error.into())
    }
}

/// Refuses `settings` of an `acrel` integration of `tenant_id` whose
/// broker and prefix overlap another tenant's. Runs inside the writing
/// transaction: on PostgreSQL under a transaction lock every claim takes,
/// on SQLite on the one writer, so two tenants cannot both claim a topic.
async fn check_mqtt_claim(
    conn: &mut crate::db::Conn<'_>,
    tenant_id: &str,
    kind: &str,
    settings: &Map<String, Value>,
) -> Result<(), RegistryError> {
    if kind != "acrel" {
        return Ok(());
    }
    let mine = Value::Object(settings.clone());
    let Some((broker, prefix)) = mqtt_topics(&mine) else {
        return Ok(());
    };
    const OTHERS: &str =
        "SELECT settings FROM integrations WHERE kind = 'acrel' AND tenant_id <> $1";
    let others: Vec<Value> = crate::db::on_conn!(conn, c => {
        sqlx::query(OTHERS)
            .bind(tenant_id)
            .fetch_all(&mut **c)
            .await?
            .iter()
            .map(|row| row.json("settings"))
            .collect::<Result<_, _>>()?
    });
    if others.iter().any(|other| topics_collide(&mine, other)) {
        return Err(RegistryError::TopicTaken {
            broker: broker.address(),
            prefix,
        });
    }
    Ok(())
}

/// Every claim serialises on this lock (PostgreSQL; SQLite has one writer).
const CLAIM_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('karvon:integrations:mqtt', 0))";

pub async fn insert(db: &Db, integration: &NewIntegration<'_>) -> Result<(), RegistryError> {
    let backend = db.backend();
    let statement = format!(
        "INSERT INTO integrations (integration_id, tenant_id, kind, name, settings, secrets)
         VALUES ({}, $2, $3, $4, {}, {})",
        backend.uuid_param("$1"),
        json_param(backend, "$5"),
        json_param(backend, "$6"),
    );
    let params = [
        Some(integration.integration_id.to_string()),
        Some(integration.tenant_id.to_string()),
        Some(integration.kind.to_string()),
        Some(integration.name.to_string()),
        Some(Value::Object(integration.settings.clone()).to_string()),
        Some(Value::Object(integration.secrets.clone()).to_string()),
    ];
    write_claimed(
        db,
        integration.tenant_id,
        integration.kind,
        integration.settings,
        &statement,
        &params,
    )
    .await?;
    Ok(())
}

/// A JSON parameter sent as text.
fn json_param(backend: crate::db::Backend, param: &str) -> String {
    match backend {
        crate::db::Backend::Postgres => format!("{param}::text::jsonb"),
        crate::db::Backend::Sqlite => param.to_string(),
    }
}

/// Runs `statement` (text parameters) in a transaction that first checks
/// the MQTT claim of `settings` ([`check_mqtt_claim`]); the rows written.
async fn write_claimed(
    db: &Db,
    tenant_id: &str,
    kind: &str,
    settings: &Map<String, Value>,
    statement: &str,
    params: &[Option<String>],
) -> Result<u64, RegistryError> {
    macro_rules! run {
        ($tx:expr, $conn:expr) => {{
            check_mqtt_claim(&mut $conn, tenant_id, kind, settings).await?;
            let mut query = sqlx::query(statement);
            for param in params {
                query = query.bind(param);
            }
            let written = query.execute(&mut *$tx).await?.rows_affected();
            $tx.commit().await?;
            Ok(written)
        }};
    }
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query(CLAIM_LOCK).execute(&mut *tx).await?;
            run!(tx, crate::db::Conn::Postgres(&mut tx))
        }
        Db::Sqlite(sqlite) => {
            let mut tx = sqlite.writer.begin().await?;
            run!(tx, crate::db::Conn::Sqlite(&mut tx))
        }
    }
}

/// An integration as its tenant's admins list it: the names of its
/// secrets, never their values.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IntegrationView {
    pub id: Uuid,
    pub kind: String,
    pub name: String,
    #[schema(value_type = Object)]
    pub settings: Value,
    /// Which secrets are stored (names only).
    pub secret_names: Vec<String>,
    pub created_at: DateTime<Utc>,
}

pub async fn list(db: &Db, tenant_id: &str) -> Result<Vec<IntegrationView>, StorageError> {
    const SELECT: &str = "SELECT integration_id, kind, name, settings, secrets, created_at
           FROM integrations WHERE tenant_id = $1 ORDER BY created_at, integration_id";
    on_pool!(db, read, pool => sqlx::query(SELECT)
        .bind(tenant_id)
        .fetch_all(pool)
        .await?
        .iter()
        .map(view_row)
        .collect())
}

/// One integration of `tenant_id` as [`list`] shows it; `None` when the
/// tenant has no such integration.
pub async fn view(
    db: &Db,
    tenant_id: &str,
    integration_id: Uuid,
) -> Result<Option<IntegrationView>, StorageError> {
    let select = format!(
        "SELECT integration_id, kind, name, settings, secrets, created_at
           FROM integrations WHERE integration_id = {} AND tenant_id = $2",
        db.backend().uuid_param("$1")
    );
    on_pool!(db, write, pool => sqlx::query(&select)
        .bind(integration_id.to_string())
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?
        .map(|row| view_row(&row))
        .transpose())
}

fn view_row(row: &impl Portable) -> Result<IntegrationView, StorageError> {
    let secrets = row.json("secrets")?;
    let mut settings = row.json("settings")?;
    // Rows stored before URL credentials were refused may hold them: they
    // are never listed.
    if let Some(settings) = settings.as_object_mut() {
        for key in ["url", "base_url", "mqtt_url"] {
            if let Some(Value::String(text)) = settings.get_mut(key) {
                *text = without_userinfo(text);
            }
        }
    }
    Ok(IntegrationView {
        id: row.uuid("integration_id")?,
        kind: row.text("kind")?,
        name: row.text("name")?,
        settings,
        secret_names: secrets
            .as_object()
            .map(|secrets| secrets.keys().cloned().collect())
            .unwrap_or_default(),
        created_at: row.time("created_at")?,
    })
}

/// Replaces the name and settings of `tenant_id`'s integration, and its
/// sealed secrets when `secrets` is given (otherwise they stay as stored).
/// `false` when the tenant has no such integration.
pub async fn update(
    db: &Db,
    tenant_id: &str,
    integration_id: Uuid,
    kind: &str,
    name: &str,
    settings: &Map<String, Value>,
    secrets: Option<&Map<String, Value>>,
) -> Result<bool, RegistryError> {
    let backend = db.backend();
    let statement = format!(
        "UPDATE integrations SET name = $3, settings = {}, secrets = coalesce({}, secrets)
          WHERE integration_id = {} AND tenant_id = $2",
        json_param(backend, "$4"),
        json_param(backend, "$5"),
        backend.uuid_param("$1"),
    );
    let params = [
        Some(integration_id.to_string()),
        Some(tenant_id.to_string()),
        Some(name.to_string()),
        Some(Value::Object(settings.clone()).to_string()),
        secrets.map(|secrets| Value::Object(secrets.clone()).to_string()),
    ];
    Ok(write_claimed(db, tenant_id, kind, settings, &statement, &params).await? == 1)
}

/// Removes `tenant_id`'s integration with its remembered webhook ids (the
/// foreign key cascades). `false` when the tenant has no such integration.
pub async fn delete(db: &Db, tenant_id: &str, integration_id: Uuid) -> Result<bool, StorageError> {
    let statement = format!(
        "DELETE FROM integrations WHERE integration_id = {} AND tenant_id = $2",
        db.backend().uuid_param("$1")
    );
    on_pool!(db, write, pool => Ok(sqlx::query(&statement)
        .bind(integration_id.to_string())
        .bind(tenant_id)
        .execute(pool)
        .await?
        .rows_affected()
        == 1))
}

/// An integration with its sealed secrets. `Debug` leaves them out.
#[derive(Clone)]
pub struct StoredIntegration {
    pub id: Uuid,
    pub tenant_id: String,
    pub kind: String,
    pub settings: Value,
    pub sealed_secrets: Map<String, Value>,
}

impl fmt::Debug for StoredIntegration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredIntegration")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("kind", &self.kind)
            .field("settings", &self.settings)
            .field("sealed_secrets", &"<redacted>")
            .finish()
    }
}

pub async fn get(db: &Db, integration_id: Uuid) -> Result<Option<StoredIntegration>, StorageError> {
    let select = format!(
        "SELECT integration_id, tenant_id, kind, settings, secrets
           FROM integrations WHERE integration_id = {}",
        db.backend().uuid_param("$1")
    );
    on_pool!(db, read, pool => sqlx::query(&select)
        .bind(integration_id.to_string())
        .fetch_optional(pool)
        .await?
        .map(|row| {
            Ok(StoredIntegration {
                id: row.uuid("integration_id")?,
                tenant_id: row.text("tenant_id")?,
                kind: row.text("kind")?,
                settings: row.json("settings")?,
                sealed_secrets: match row.json("secrets")? {
                    Value::Object(map) => map,
                    _ => return Err(StorageError::Corrupt("secrets is not an object".into())),
                },
            })
        })
        .transpose())
}

/// Every integration of `kind` (all tenants), oldest first, with its
/// settings, sealed secrets and when it was registered: what the
/// schedulers and listeners go through.
pub async fn of_kind(
    db: &Db,
    kind: &str,
) -> Result<Vec<(StoredIntegration, chrono::DateTime<chrono::Utc>)>, StorageError> {
    on_pool!(db, read, pool => sqlx::query(
        "SELECT integration_id, tenant_id, kind, settings, secrets, created_at
           FROM integrations WHERE kind = $1 ORDER BY created_at, integration_id",
    )
    .bind(kind)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|row| {
        Ok((
            StoredIntegration {
                id: row.uuid("integration_id")?,
                tenant_id: row.text("tenant_id")?,
                kind: row.text("kind")?,
                settings: row.json("settings")?,
                sealed_secrets: match row.json("secrets")? {
                    Value::Object(map) => map,
                    _ => return Err(StorageError::Corrupt("secrets is not an object".into())),
                },
            },
            row.time("created_at")?,
        ))
    })
    .collect())
}

/// Whether `webhook_id` was already applied for the integration.
pub async fn delivery_seen(
    db: &Db,
    integration_id: Uuid,
    webhook_id: &str,
) -> Result<bool, StorageError> {
    let select = format!(
        "SELECT 1 FROM webhook_deliveries WHERE integration_id = {} AND webhook_id = $2",
        db.backend().uuid_param("$1")
    );
    on_pool!(db, write, pool => Ok(sqlx::query(&select)
        .bind(integration_id.to_string())
        .bind(webhook_id)
        .fetch_optional(pool)
        .await?
        .is_some()))
}

/// Remembers that `webhook_id` was applied (a repeat changes nothing).
pub async fn record_delivery(
    db: &Db,
    integration_id: Uuid,
    webhook_id: &str,
) -> Result<(), StorageError> {
    let insert = format!(
        "INSERT INTO webhook_deliveries (integration_id, webhook_id) VALUES ({}, $2)
         ON CONFLICT DO NOTHING",
        db.backend().uuid_param("$1")
    );
    on_pool!(db, write, pool => sqlx::query(&insert)
        .bind(integration_id.to_string())
        .bind(webhook_id)
        .execute(pool)
        .await
        .map(|_| ())?);
    Ok(())
}

/// Forgets applied webhook ids recorded more than `retention` ago; answers
/// how many. Safe for any retention above twice
/// [`TIMESTAMP_TOLERANCE_SECS`]: a signed delivery whose id is forgotten
/// is then refused as stale before its id is looked up, and a Bearer-key
/// delivery repeated with the same `webhook-id` still answers from the
/// idempotency log (`webhook:<integration>:<webhook-id>`), which is kept.
pub async fn prune_deliveries(
    db: &Db,
    retention: std::time::Duration,
) -> Result<u64, StorageError> {
    let retention = chrono::Duration::from_std(retention)
        .map_err(|_| StorageError::Config("webhook delivery retention is too long".into()))?;
    let cutoff = Utc::now() - retention;
    const DELETE: &str = "DELETE FROM webhook_deliveries WHERE received_at < $1";
    Ok(match db {
        Db::Postgres(pool) => sqlx::query(DELETE)
            .bind(cutoff)
            .execute(pool)
            .await?
            .rows_affected(),
        // Stored as `strftime('%Y-%m-%dT%H:%M:%fZ')` text, which sorts as time.
        Db::Sqlite(sqlite) => sqlx::query(DELETE)
            .bind(cutoff.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            .execute(&sqlite.writer)
            .await?
            .rows_affected(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> Vec<u8> {
        signing_key(secret).expect("secret")
    }

    #[test]
    fn the_published_test_vectors_verify() {
        // From the brief (the Standard Webhooks reference libraries).
        let body = br#"{"test": 2432232314}"#;
        let secret = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(
            sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert_eq!(
            verify_signature(
                &[secret],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                "1614265330",
                "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
                body,
                1_614_265_330,
            ),
            Ok(())
        );
        // domain-anchors.md §4.1 (libraries/rust/src/lib.rs).
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let secret = key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        assert_eq!(
            verify_signature(
                &[key("whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcY"), secret],
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                "1649367553",
                "v1a,ignored v1,bm90IGl0 v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
                body,
                1_649_367_553 + 299,
            ),
            Ok(())
        );
    }

    #[test]
    fn forged_changed_and_stale_deliveries_are_refused() {
        let secret = key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let (id, ts) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330");
        let now = 1_614_265_330;
        let check = |keys: &[Vec<u8>], body: &[u8], now: i64| {
            verify_signature(keys, id, ts, signature, body, now)
        };
        let body = br#"{"test": 2432232314}"#;
        let other = key("whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcY");
        assert_eq!(check(&[other], body, now), Err(SignatureError::NoMatch));
        assert_eq!(
            check(
                std::slice::from_ref(&secret),
                br#"{"test": 2432232315}"#,
                now
            ),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            check(std::slice::from_ref(&secret), body, now + 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            check(std::slice::from_ref(&secret), body, now - 301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(
                std::slice::from_ref(&secret),
                id,
                "soon",
                signature,
                body,
                now
            ),
            Err(SignatureError::BadTimestamp)
        );
        // Extreme timestamps are stale, not wrapped around into fresh.
        for extreme in [i64::MIN.to_string(), i64::MAX.to_string()] {
            assert_eq!(
                verify_signature(
                    std::slice::from_ref(&secret),
                    id,
                    &extreme,
                    signature,
                    body,
                    now
                ),
                Err(SignatureError::Stale)
            );
        }
        assert_eq!(
            verify_signature(&[secret], id, "1", signature, body, i64::MIN),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn secrets_seal_per_integration_and_name() {
        let key = SecretsKey::generate();
        let id = Uuid::now_v7();
        let mut secrets = Map::new();
        secrets.insert("password".into(), Value::String("s3cret".into()));
        let sealed = key.seal(id, &secrets).expect("seal");
        assert!(!Value::Object(sealed.clone()).to_string().contains("s3cret"));
        assert_ne!(
            sealed,
            key.seal(id, &secrets).expect("seal"),
            "a fresh nonce per value"
        );
        assert_eq!(key.open(id, &sealed).expect("open"), secrets);
        assert!(key.open(Uuid::now_v7(), &sealed).is_err());
        assert!(SecretsKey::generate().open(id, &sealed).is_err());
        assert_eq!(format!("{key:?}"), "SecretsKey(<redacted>)");
    }

    #[test]
    fn a_generated_key_file_is_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("karvon-key-{}", Uuid::now_v7().simple()));
        let path = dir.join("secrets.key");
        let first = SecretsKey::load_or_create(&path).expect("created");
        let second = SecretsKey::load_or_create(&path).expect("reused");
        assert_eq!(first.0, second.0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("file").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_parse_from_hex_or_base64() {
        let hex_key = "00".repeat(32);
        assert!(SecretsKey::parse(&hex_key).is_ok());
        assert!(SecretsKey::parse(&STANDARD.encode([7u8; 32])).is_ok());
        assert!(SecretsKey::parse("short").is_err());
    }

    #[test]
    fn allow_lists_take_addresses_and_ranges() {
        let list = |entries: Value| IpAllowlist::of(&serde_json::json!({"ip_allowlist": entries}));
        let ip = |text: &str| Some(text.parse::<IpAddr>().expect("ip"));
        assert_eq!(list(serde_json::json!([])), None);
        assert_eq!(IpAllowlist::of(&serde_json::json!({})), None);
        let allowed = list(serde_json::json!([
            "203.0.113.7",
            "10.1.0.0/16",
            "2001:db8::/32"
        ]))
        .expect("a list");
        assert!(allowed.allows(ip("203.0.113.7")));
        assert!(!allowed.allows(ip("203.0.113.8")));
        assert!(allowed.allows(ip("10.1.255.1")));
        assert!(!allowed.allows(ip("10.2.0.1")));
        assert!(allowed.allows(ip("2001:db8::5")));
        assert!(allowed.allows(ip("::ffff:10.1.2.3")), "IPv4-mapped IPv6");
        assert!(!allowed.allows(None), "an unknown peer is refused");
        let unreadable = list(serde_json::json!(["not an address"])).expect("a list");
        assert_eq!(unreadable.unreadable(), 1);
        assert!(!unreadable.allows(ip("127.0.0.1")), "fails closed");
    }

    #[test]
    fn kinds_check_required_and_unknown_keys() {
        let object = |value: Value| value.as_object().cloned().expect("object");
        let empty = Map::new();
        assert!(validate("ftp", &empty, &empty).is_err());
        let error = validate(
            "1c_soap",
            &object(serde_json::json!({"url": "http://1c"})),
            &empty,
        )
        .expect_err("namespace missing");
        assert!(error.contains("settings.namespace"), "{error}");
        let settings = validate(
            "1c_soap",
            &object(serde_json::json!({"url": "http://1c", "namespace": "urn:x"})),
            &object(serde_json::json!({"username": "u", "password": "p"})),
        )
        .expect("valid");
        assert_eq!(settings["chunk_size"], 100);
        let secrets = object(
            serde_json::json!({"signing_secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]}),
        );
        assert!(validate("webhook_source", &empty, &secrets).is_ok());
        assert!(
            validate(
                "webhook_source",
                &object(
                    serde_json::json!({"ip_allowlist": ["192.0.2.1", "198.51.100.0/24", "::1"]})
                ),
                &secrets
            )
            .is_ok()
        );
        let error = validate(
            "webhook_source",
            &object(serde_json::json!({"ip_allowlist": ["192.0.2.300"]})),
            &secrets,
        )
        .expect_err("not an address");
        assert!(error.contains("settings.ip_allowlist"), "{error}");
        assert!(validate("webhook_source", &empty, &empty).is_err());
        assert!(
            validate(
                "webhook_source",
                &object(serde_json::json!({"colour": "red"})),
                &secrets
            )
            .is_err()
        );
    }

    #[test]
    fn urls_carry_no_credentials_and_brokers_parse_with_url() {
        let object = |value: Value| value.as_object().cloned().expect("object");
        let creds = object(serde_json::json!({"username": "u", "password": "p"}));
        for url in ["http://admin:pw@1c.local/ws", "https://admin@1c.local/ws"] {
            let error = validate(
                "1c_soap",
                &object(serde_json::json!({"url": url, "namespace": "urn:x"})),
                &creds,
            )
            .expect_err("userinfo refused");
            assert!(error.contains("user:password@"), "{error}");
        }
        assert!(
            validate(
                "1c_odata",
                &object(serde_json::json!({"base_url": "ftp://1c.local/odata"})),
                &creds
            )
            .is_err()
        );
        assert_eq!(
            Broker::parse("mqtt://Broker.Example:1884").expect("broker"),
            Broker {
                host: "broker.example".into(),
                port: 1884,
                tls: false
            }
        );
        assert_eq!(
            Broker::parse("mqtts://broker.example").expect("tls").port,
            8883
        );
        assert_eq!(
            Broker::parse("mqtt://[::1]").expect("v6").address(),
            "[::1]:1883"
        );
        // The security review's URL: `user:pass@host` used to become the host.
        assert!(
            Broker::parse("mqtt://user:pass@broker.example:1883")
                .expect_err("userinfo")
                .contains("user:password@")
        );
        for bad in [
            "broker.example:1883",
            "http://broker",
            "mqtt://broker/x",
            "mqtt://:1883",
        ] {
            assert!(Broker::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listed_urls_never_show_credentials() {
        assert_eq!(
            without_userinfo("http://admin:s3cret@1c.local/ws"),
            "http://***@1c.local/ws"
        );
        assert_eq!(
            without_userinfo("mqtt://u:p@broker:1883"),
            "mqtt://***@broker:1883"
        );
        assert_eq!(
            without_userinfo("https://1c.local/ws"),
            "https://1c.local/ws"
        );
        assert_eq!(without_userinfo("not a url"), "not a url");
    }

    #[test]
    fn topic_prefixes_are_plain_levels_and_overlap_by_level() {
        for good in ["acrel", "shop-1/meters", "a/b/c"] {
            assert!(check_topic_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", "a/", "/a", "a//b", "a/+", "#", "a/#/b", "$SYS", "a/b+c"] {
            assert!(check_topic_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(prefixes_overlap("shared1", "shared1"));
        assert!(prefixes_overlap("shared1", "shared1/east"));
        assert!(prefixes_overlap("shared1/east", "shared1"));
        assert!(!prefixes_overlap("shared1", "shared10"));
        assert!(!prefixes_overlap("a/b", "a/c"));
        let a = serde_json::json!({"mqtt_url": "mqtt://broker:1883", "topic_prefix": "shared1"});
        let same_broker =
            serde_json::json!({"mqtt_url": "mqtts://BROKER:1883", "topic_prefix": "shared1/x"});
        let other_port =
            serde_json::json!({"mqtt_url": "mqtt://broker:1884", "topic_prefix": "shared1"});
        let default_prefix = serde_json::json!({"mqtt_url": "mqtt://broker"});
        assert!(topics_collide(&a, &same_broker));
        assert!(!topics_collide(&a, &other_port));
        assert!(!topics_collide(&a, &default_prefix));
        assert!(topics_collide(
            &default_prefix,
            &serde_json::json!({"mqtt_url": "tcp://broker:1883/"})
        ));
    }
}
