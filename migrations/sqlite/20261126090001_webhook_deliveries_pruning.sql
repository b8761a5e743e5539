-- Applied webhook ids are forgotten after a retention (the housekeeping
-- worker deletes by age once a minute): index the age.
CREATE INDEX webhook_deliveries_received_idx ON webhook_deliveries (received_at);
