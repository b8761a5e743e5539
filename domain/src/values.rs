//! Quantities and money. Always `Decimal`, never floats; JSON carries them
//! as strings (`"1250.50"`) and accepts strings or numbers on input.

use std::fmt;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must not be negative")]
    Negative,
    #[error("must be at most 10^15 in magnitude")]
    TooLarge,
}

/// The largest quantity or amount a command may carry (SPEC §2: ±10^15).
/// Far beyond any real stock or price, and far enough below `Decimal`'s
/// range (~7.9·10^28) that sums of them cannot overflow.
pub fn max_amount() -> Decimal {
    Decimal::from(1_000_000_000_000_000i64)
}

fn bounded(value: Decimal) -> Result<Decimal, ValueError> {
    if value.abs() > max_amount() {
        return Err(ValueError::TooLarge);
    }
    Ok(value)
}

/// A quantity of goods moved by a command: strictly positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Quantity(Decimal);

impl Quantity {
    pub fn parse(value: Decimal) -> Result<Self, ValueError> {
        if value <= Decimal::ZERO {
            return Err(ValueError::NotPositive);
        }
        Ok(Self(bounded(value)?.normalize()))
    }

    pub fn value(self) -> Decimal {
        self.0
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Quantity::parse(<Decimal as Deserialize>::deserialize(deserializer)?)
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A non-negative amount: a price, a unit cost, a counted quantity, a
/// reorder level. Precision is kept as the source sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Money(Decimal);

impl Money {
    pub const ZERO: Money = Money(Decimal::ZERO);

    pub fn parse(value: Decimal) -> Result<Self, ValueError> {
        if value < Decimal::ZERO {
            return Err(ValueError::Negative);
        }
        Ok(Self(bounded(value)?))
    }

    pub fn value(self) -> Decimal {
        self.0
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Money::parse(<Decimal as Deserialize>::deserialize(deserializer)?)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantity_accepts_strings_and_numbers() {
        let from_string: Quantity = serde_json::from_str("\"12.50\"").expect("string");
        let from_number: Quantity = serde_json::from_str("12.5").expect("number");
        assert_eq!(from_string, from_number);
        assert_eq!(
            serde_json::to_string(&from_number).expect("ser"),
            "\"12.5\""
        );
    }

    #[test]
    fn quantity_refuses_zero_and_negative() {
        assert!(serde_json::from_str::<Quantity>("0").is_err());
        assert!(serde_json::from_str::<Quantity>("\"-1\"").is_err());
    }

    #[test]
    fn amounts_beyond_ten_to_the_fifteen_are_refused() {
        assert!(serde_json::from_str::<Quantity>("\"1000000000000000\"").is_ok());
        assert!(serde_json::from_str::<Quantity>("\"1000000000000000.01\"").is_err());
        assert!(serde_json::from_str::<Money>("\"79228162514264337593543950335\"").is_err());
        assert_eq!(
            Money::parse(Decimal::MAX).map_err(|error| error.to_string()),
            Err("must be at most 10^15 in magnitude".to_string())
        );
    }

    #[test]
    fn money_keeps_precision_and_refuses_negative() {
        let price: Money = serde_json::from_str("\"1250.50\"").expect("money");
        let number: Money = serde_json::from_str("1250.50").expect("money");
        assert_eq!(serde_json::to_string(&number).expect("ser"), "\"1250.50\"");
        assert_eq!(serde_json::to_string(&price).expect("ser"), "\"1250.50\"");
        assert!(serde_json::from_str::<Money>("-0.01").is_err());
    }
}
