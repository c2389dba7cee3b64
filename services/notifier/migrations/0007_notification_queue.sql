-- The dispatcher's queue, a table of its own (issue 15): one row per notification still to be sent, deleted
-- once it is sent, cancelled or erased. What the dispatcher claims, and what autovacuum reads, stays the
-- size of what is due, not of the year; `notifications` keeps the history, each row updated once (to its end)
-- and no longer in a partial index on its status.
-- A notification is 'pending' in `notifications` until it ends; while a notifier sends it, its queue row
-- carries `claimed_at` (what was the 'sending' status; the lease counts from it).
CREATE TABLE notification_queue (
    id         bigint PRIMARY KEY REFERENCES notifications (id) ON DELETE CASCADE,
    request_id text NOT NULL,
    due_at     timestamptz NOT NULL,
    now_lane   boolean NOT NULL,  -- days_before IS NULL: what a customer just did, sent before reminders
    claimed_at timestamptz
);
CREATE INDEX notification_queue_due_now ON notification_queue (due_at, id) WHERE claimed_at IS NULL AND now_lane;
CREATE INDEX notification_queue_due_scheduled ON notification_queue (due_at, id)
    WHERE claimed_at IS NULL AND NOT now_lane;
CREATE INDEX notification_queue_sending ON notification_queue (claimed_at) WHERE claimed_at IS NOT NULL;
-- A queue: rows come and go at the rate of mails, so vacuumed at a fixed number of dead rows.
ALTER TABLE notification_queue SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
                                    autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 5000);

-- Every writer of `notifications` (the consumer's statements, the rebuild, an erasure, the dispatcher's
-- confirmation) keeps the queue by these two triggers, written once here rather than in each statement:
-- a row written 'pending' is queued; a row leaving 'pending' leaves the queue. Unqualified, like every
-- statement of the service: the table is the one in the writer's search_path (its schema, or a rebuild's).
CREATE FUNCTION notification_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notification_queue (id, request_id, due_at, now_lane)
    VALUES (NEW.id, NEW.request_id, NEW.due_at, NEW.days_before IS NULL) ON CONFLICT (id) DO NOTHING;
    RETURN NULL;
END $$;
CREATE FUNCTION notification_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM notification_queue WHERE id = NEW.id;
    RETURN NULL;
END $$;
CREATE TRIGGER notification_queued AFTER INSERT ON notifications
    FOR EACH ROW WHEN (NEW.status = 'pending') EXECUTE FUNCTION notification_queued();
CREATE TRIGGER notification_ended AFTER UPDATE OF status ON notifications
    FOR EACH ROW WHEN (OLD.status = 'pending' AND NEW.status <> 'pending')
    EXECUTE FUNCTION notification_ended();

-- What was due or in flight moves to the queue; 'sending' becomes the queue's claim.
INSERT INTO notification_queue (id, request_id, due_at, now_lane, claimed_at)
SELECT id, request_id, due_at, days_before IS NULL, CASE WHEN status = 'sending' THEN claimed_at END
FROM notifications WHERE status IN ('pending', 'sending');
UPDATE notifications SET status = 'pending' WHERE status = 'sending';
DROP INDEX notifications_due_now;
DROP INDEX notifications_due_scheduled;
DROP INDEX notifications_sending;
ALTER TABLE notifications DROP COLUMN claimed_at;
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('pending', 'sent', 'cancelled', 'erased'));
