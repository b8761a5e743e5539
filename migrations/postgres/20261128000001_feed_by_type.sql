-- A consumer reads only the aggregate types it folds: one ordered index
-- range per type, in feed order, instead of walking every event.
CREATE INDEX events_type_feed_idx ON events (aggregate_type, transaction_id, global_position);
