-- The queue empties and fills again at the rate of mails: as the outbox (shared/migrations/0004), its empty
-- last pages are kept rather than truncated under a lock that would stop every claim and every queued mail.
ALTER TABLE notification_queue SET (vacuum_truncate = false);
