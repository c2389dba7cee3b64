-- The customer is kept as it came, sealed with its contract's data key (intake holds the keys): notifier
-- opens it only to send a mail. An erased contract's recipients keep ids only; its pending mails are 'erased'.
ALTER TABLE recipients ALTER COLUMN customer_name DROP NOT NULL;
ALTER TABLE recipients ALTER COLUMN email DROP NOT NULL;
ALTER TABLE recipients ADD COLUMN customer_sealed jsonb;
ALTER TABLE recipients ADD COLUMN erased_at timestamptz;
CREATE INDEX recipients_contract ON recipients (contract_id);
ALTER TABLE notifications DROP CONSTRAINT notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('pending', 'sent', 'cancelled', 'erased'));
