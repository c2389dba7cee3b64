-- At-least-once e-mail with a deterministic Message-ID (issue 14): a claimed notification is 'sending',
-- committed before its DATA ends, until the server's 250 confirms it 'sent'. One left 'sending' longer than
-- the lease (its notifier died in between) is sent again, with the same Message-ID, by any notifier.
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('pending', 'sending', 'sent', 'cancelled', 'erased'));
ALTER TABLE notifications ADD COLUMN claimed_at timestamptz;
CREATE INDEX notifications_sending ON notifications (claimed_at) WHERE status = 'sending';
