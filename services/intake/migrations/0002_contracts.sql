-- intake: the contracts as the quote and the customer's cancel page need them (from contracts.events).
CREATE TABLE contracts (
    contract_id     text PRIMARY KEY,
    account_id      text NOT NULL,
    plan            text NOT NULL,
    monthly_fee_jpy integer NOT NULL,
    start_date      date NOT NULL,
    customer        jsonb,  -- prefills the page's form; personal data
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- The billing dates paid: a paid one is not charged again (the same rule billing settles with).
CREATE TABLE payments (
    contract_id  text NOT NULL,
    billing_date date NOT NULL,
    PRIMARY KEY (contract_id, billing_date)
);
