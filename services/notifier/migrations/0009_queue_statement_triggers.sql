-- The queue's two triggers, once a statement instead of once a row: an acceptance writes about seven
-- notifications and a confirmation ends a batch of them, each row a PL/pgSQL call before. Same rule as 0007:
-- a row written 'pending' is queued; a row leaving 'pending' leaves the queue. An UPDATE trigger with
-- transition tables cannot name its columns, so it looks at every UPDATE and keeps the status moves.
DROP TRIGGER notification_queued ON notifications;
DROP TRIGGER notification_ended ON notifications;
DROP FUNCTION notification_queued();
DROP FUNCTION notification_ended();

CREATE FUNCTION notification_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notification_queue (id, request_id, due_at, now_lane)
    SELECT id, request_id, due_at, days_before IS NULL FROM written WHERE status = 'pending'
    ON CONFLICT (id) DO NOTHING;
    RETURN NULL;
END $$;
-- By primary key, whatever the planner guesses of a transition table's size.
CREATE FUNCTION notification_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM notification_queue WHERE id = ANY (ARRAY(
        SELECT a.id FROM before_update b JOIN after_update a ON a.id = b.id
        WHERE b.status = 'pending' AND a.status <> 'pending'));
    RETURN NULL;
END $$;
CREATE TRIGGER notification_queued AFTER INSERT ON notifications
    REFERENCING NEW TABLE AS written FOR EACH STATEMENT EXECUTE FUNCTION notification_queued();
CREATE TRIGGER notification_ended AFTER UPDATE ON notifications
    REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
    FOR EACH STATEMENT EXECUTE FUNCTION notification_ended();
