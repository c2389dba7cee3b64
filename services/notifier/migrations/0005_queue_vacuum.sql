-- notifications is also the dispatcher's queue: each send updates a row twice (pending -> sending -> sent),
-- never HOT, since the status is in the partial indexes the dispatcher reads. With the default trigger
-- (20 % of a table that grows with the business) those indexes fill with dead entries between vacuums.
-- A fixed threshold keeps them bounded (measured: docs/performance.md, issue 15).
ALTER TABLE notifications SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 20000,
                               autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 50000);
