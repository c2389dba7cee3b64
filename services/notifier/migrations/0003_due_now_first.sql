-- The dispatcher sends what a customer just did (acknowledgement, rejection, the reminders sent on
-- acceptance: days_before IS NULL) before scheduled reminders, which all fall due at 10:00 Tokyo at once;
-- one partial index per lane, each read oldest first.
DROP INDEX notifications_due;
CREATE INDEX notifications_due_now ON notifications (due_at, id) WHERE status = 'pending' AND days_before IS NULL;
CREATE INDEX notifications_due_scheduled ON notifications (due_at, id) WHERE status = 'pending' AND days_before IS NOT NULL;
