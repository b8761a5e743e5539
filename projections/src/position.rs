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

/// What a command answers with: the place of its last event, named either
/// by feed position or by stream and sequence. Commands answer the stream
/// form, which needs no extra query to learn; a query that waits for it
/// resolves it to the feed position once (`X-Min-Position`).
///
/// Wire forms: `"<txid>.<position>"` and
/// `"s:<aggregate_type>:<sequence>:<aggregate_id>"` (the id goes last, as
/// it may itself contain `:` and `/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PositionToken {
    Feed(Position),
    Stream {
        aggregate_type: String,
        sequence: i64,
        aggregate_id: String,
    },
}

impl fmt::Display for PositionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PositionToken::Feed(position) => position.fmt(f),
            PositionToken::Stream {
                aggregate_type,
                sequence,
                aggregate_id,
            } => {
                write!(f, "s:{aggregate_type}:{sequence}:{aggregate_id}")
            }
        }
    }
}

impl FromStr for PositionToken {
    type Err = PositionParseError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        let Some(rest) = value.strip_prefix("s:") else {
            return value.parse().map(PositionToken::Feed);
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(aggregate_type), Some(sequence), Some(aggregate_id)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(PositionParseError);
        };
        let sequence: i64 = sequence.parse().map_err(|_| PositionParseError)?;
        if aggregate_type.is_empty() || aggregate_id.is_empty() || sequence < 1 {
            return Err(PositionParseError);
        }
        Ok(PositionToken::Stream {
            aggregate_type: aggregate_type.to_string(),
            sequence,
            aggregate_id: aggregate_id.to_string(),
        })
    }
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn both_forms_round_trip() {
        let stream = PositionToken::Stream {
            aggregate_type: "StockItem".into(),
            sequence: 7,
            aggregate_id: "default/W:1/P1".into(),
        };
        assert_eq!(stream.to_string().parse::<PositionToken>(), Ok(stream));
        let feed = PositionToken::Feed(Position::new(5, 9));
        assert_eq!("5.9".parse::<PositionToken>(), Ok(feed));
        assert!("s:StockItem:x:id".parse::<PositionToken>().is_err());
        assert!("s:StockItem:3".parse::<PositionToken>().is_err());
    }
}
