-- The queue's vacuum, unthrottled: at the rate of mails it has tens of thousands of dead rows a minute (each
-- claim and each end), and a throttled vacuum of it was still running when the next was due (issue 15's
-- soak, session 10). Unthrottled it reads a table the size of what is due, in well under a second.
ALTER TABLE notification_queue SET (autovacuum_vacuum_cost_delay = 0);
