-- Each contract's data key (AES-256-GCM), the only one there is: the customer in cancellation.requested is
-- sealed with it. Erasure sets key NULL (and erased_at): every sealed copy, in any topic, is unreadable then.
CREATE TABLE subject_keys (
    contract_id text PRIMARY KEY,
    key_id      text,
    key         bytea,
    created_at  timestamptz NOT NULL DEFAULT now(),
    erased_at   timestamptz,
    CHECK ((key IS NULL) = (key_id IS NULL))
);

ALTER TABLE contracts ADD COLUMN erased_at timestamptz;
ALTER TABLE requests ADD COLUMN erased_at timestamptz;
-- The request row never needed the customer (the event carries it, sealed): rows made before lose it.
UPDATE requests SET form = form - 'customer' WHERE form ? 'customer';
