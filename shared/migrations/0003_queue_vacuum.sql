-- The outbox is a queue (every row deleted once relayed) and the inbox loses its oldest ids every minute:
-- both churn at the event rate. Autovacuum's default trigger (20 % of the table dead) lets dead index
-- entries pile up between vacuums, and every relay read and prune walks them. A fixed threshold keeps the
-- dead part of each table bounded, whatever the table's size (measured: docs/performance.md, issue 15).
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 2000,
                        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 20000);
ALTER TABLE processed_events SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);
