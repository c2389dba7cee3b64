-- A batch's read of what is known of its contracts and requests (store.py `_SEEN`: contract_id = ANY(...) OR
-- request_id = ANY(...)) had only a partial index on contract_id (pending rows), so it was a sequential scan
-- of every cancellation ever made, once a batch: the cost grew with the year (issue 15's soak, sampled in
-- pg_stat_activity). With this index it is a bitmap OR of two index scans.
CREATE INDEX cancellations_contract ON cancellations (contract_id);
