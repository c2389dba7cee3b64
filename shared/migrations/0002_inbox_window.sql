-- The inbox keeps event ids for a window (SPEC section 8): the pruner deletes the oldest first, by this index.
CREATE INDEX processed_events_processed_at ON processed_events (processed_at);
