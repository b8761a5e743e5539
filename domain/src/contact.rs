//! Contact details shared by the parties a tenant deals with: customers
//! and suppliers.

use serde::{Deserialize, Serialize};

/// Who a party is and how to reach it; `PUT` replaces all of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContactDetails {
    pub name: String,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub tax_id: Option<String>,
    pub address: Option<String>,
}

impl ContactDetails {
    /// Every field 1 to its limit of characters (the name is required):
    /// `Err((field, reason))` otherwise.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        let check = |field: &'static str, value: &str, max: usize| {
            if value.trim().is_empty() || value.chars().count() > max {
                return Err((field, "must be 1 to the allowed number of characters"));
            }
            Ok(())
        };
        check("name", &self.name, 256)?;
        for (field, value, max) in [
            ("phone", &self.phone, 32),
            ("email", &self.email, 254),
            ("tax_id", &self.tax_id, 32),
            ("address", &self.address, 512),
        ] {
            if let Some(value) = value {
                check(field, value, max)?;
            }
        }
        Ok(())
    }
}
