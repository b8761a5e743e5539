//! Identifiers chosen by clients: product ids, warehouse ids, 1C GUIDs,
//! REGOS ids. SPEC: strings of 1–64 characters from `[A-Za-z0-9._:-]`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// A validated client-chosen identifier.
///
/// The character set leaves out `/`, which is why aggregate ids can join a
/// tenant and several ids with `/` and still be split back unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Id(String);

/// The tenant an event, a read-model row or a credential belongs to.
pub type TenantId = Id;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 64 characters")]
    TooLong,
    #[error("may contain only letters, digits and . _ : -")]
    BadCharacter,
}

impl Id {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        if value.is_empty() {
            return Err(IdError::Empty);
        }
        if value.len() > Self::MAX_LEN {
            return Err(IdError::TooLong);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
        if !value.chars().all(allowed) {
            return Err(IdError::BadCharacter);
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Id::parse(raw).map_err(serde::de::Error::custom)
    }
}

/// The aggregate id of a product stream: `<tenant>/<product>`.
pub fn product_stream_id(tenant: &TenantId, product: &Id) -> String {
    format!("{tenant}/{product}")
}

/// The aggregate id of a customer stream: `<tenant>/<customer>`.
pub fn customer_stream_id(tenant: &TenantId, customer: &Id) -> String {
    format!("{tenant}/{customer}")
}

/// The aggregate id of a sale stream: `<tenant>/<sale>`.
pub fn sale_stream_id(tenant: &TenantId, sale: &Id) -> String {
    format!("{tenant}/{sale}")
}

/// The aggregate id of a supplier stream: `<tenant>/<supplier>`.
pub fn supplier_stream_id(tenant: &TenantId, supplier: &Id) -> String {
    format!("{tenant}/{supplier}")
}

/// The aggregate id of a purchase order stream: `<tenant>/<po>`.
pub fn purchase_order_stream_id(tenant: &TenantId, po: &Id) -> String {
    format!("{tenant}/{po}")
}

/// The aggregate id of an import job stream: `<tenant>/<job>`.
pub fn import_job_stream_id(tenant: &TenantId, job: &Id) -> String {
    format!("{tenant}/{job}")
}

/// The aggregate id of a meter stream: `<tenant>/<meter>`.
pub fn meter_stream_id(tenant: &TenantId, meter: &Id) -> String {
    format!("{tenant}/{meter}")
}

/// The aggregate id of an alert stream: `<tenant>/<alert>`.
pub fn alert_stream_id(tenant: &TenantId, alert: &Id) -> String {
    format!("{tenant}/{alert}")
}

/// The aggregate id of a stock item stream: `<tenant>/<warehouse>/<product>`.
pub fn stock_stream_id(tenant: &TenantId, warehouse: &Id, product: &Id) -> String {
    format!("{tenant}/{warehouse}/{product}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_guids_and_regos_ids() {
        assert!(Id::parse("8f1c2d3e-0000-11ee-9a4b-005056a1b2c3").is_ok());
        assert!(Id::parse("regos:1042").is_ok());
        assert!(Id::parse("WH_1.main").is_ok());
    }

    #[test]
    fn refuses_empty_long_and_odd_ids() {
        assert_eq!(Id::parse(""), Err(IdError::Empty));
        assert_eq!(Id::parse("x".repeat(65)), Err(IdError::TooLong));
        assert_eq!(Id::parse("a/b"), Err(IdError::BadCharacter));
        assert_eq!(Id::parse("товар"), Err(IdError::BadCharacter));
    }

    #[test]
    fn deserializing_validates() {
        let bad: Result<Id, _> = serde_json::from_str("\"a b\"");
        assert!(bad.is_err());
    }
}
