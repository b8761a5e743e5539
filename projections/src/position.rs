//! A place in the global event feed.
//!
//! On PostgreSQL the feed is ordered by `(transaction_id, global_position)`:
//! positions from a `BIGSERIAL` are handed out before commit, so commit
//! order can differ from position order, while everything below the
//! snapshot's `xmin` is settled. A projection's checkpoint is such a pair,
//! and an event has been applied exactly when the checkpoint is at or past
//! it. On the wire it is the opaque string `"<transaction_id>.<global_position>"`.

use std::fmt;
use std::str::FromStr;

/// Ordered lexicographically: transaction first, then global position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    pub transaction_id: u64,
    pub global_position: i64,
}

impl Position {
    pub const START: Position = Position {
        transaction_id: 0,
        global_position: 0,
    };

    pub fn new(transaction_id: u64, global_position: i64) -> Self {
        Self {
            transaction_id,
            global_position,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.transaction_id, self.global_position)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a feed position (expected the token a command answered with)")]
pub struct PositionParseError;

impl FromStr for Position {
    type Err = PositionParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (transaction, global) = value.trim().split_once('.').ok_or(PositionParseError)?;
        let transaction_id = transaction.parse().map_err(|_| PositionParseError)?;
        let global_position: i64 = global.parse().map_err(|_| PositionParseError)?;
        if global_position < 0 {
            return Err(PositionParseError);
        }
        Ok(Self {
            transaction_id,
            global_position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_orders_by_transaction_first() {
        let early_tx_late_slot = Position::new(10, 99);
        let late_tx_early_slot = Position::new(11, 5);
        assert!(early_tx_late_slot < late_tx_early_slot);
        let parsed: Position = early_tx_late_slot.to_string().parse().expect("parse");
        assert_eq!(parsed, early_tx_late_slot);
    }

    #[test]
    fn refuses_garbage() {
        assert!("12".parse::<Position>().is_err());
        assert!("a.b".parse::<Position>().is_err());
        assert!("1.-2".parse::<Position>().is_err());
    }
}
