//! The read models behind the query API: each owns a schema, folds the
//! feed with the pure functions in `karvon_projections`, and answers its
//! queries. Every row carries its tenant and every query filters by it.

pub mod alerts;
pub mod catalog;
pub mod customers;
pub mod jobs;
pub mod meters;
pub mod procurement;
pub mod sales;
pub mod stock;

use serde::de::DeserializeOwned;

use crate::StorageError;
use crate::feed::FeedEvent;

/// The batch's events of aggregate `A`, decoded, in feed order.
pub(crate) fn events_of<A: cqrs_es::Aggregate>(
    events: &[FeedEvent],
) -> Result<Vec<(&FeedEvent, A::Event)>, StorageError> {
    events
        .iter()
        .filter(|event| event.aggregate_type == A::TYPE)
        .map(|event| Ok((event, decode(event)?)))
        .collect()
}

/// Decodes an event payload of a version this build understands. There is
/// one version of each event so far; a future v2 adds an upcaster here.
pub(crate) fn decode<E: DeserializeOwned>(event: &FeedEvent) -> Result<E, StorageError> {
    if event.event_version != karvon_domain::EVENT_VERSION_1 {
        return Err(StorageError::Corrupt(format!(
            "{} {} has unknown version {}",
            event.aggregate_type, event.event_type, event.event_version
        )));
    }
    E::deserialize(&event.payload).map_err(|error| {
        StorageError::Corrupt(format!(
            "{} at {}: {error}",
            event.event_type, event.position
        ))
    })
}
