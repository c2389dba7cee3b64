-- The outbox empties and fills again all day: a vacuum finding its last pages empty would give them back to
-- the file system, and for that it takes the table's ACCESS EXCLUSIVE lock, so every transaction's outbox
-- INSERT waits behind it (and the truncation's WAL is flushed to the disk while it is held). The pages are
-- wanted again a moment later: kept.
ALTER TABLE outbox SET (vacuum_truncate = false);
