-- billing: its own view of contracts, the payment ledger, and settlements.
CREATE TABLE contracts (
    contract_id     text PRIMARY KEY,
    start_date      date NOT NULL,
    monthly_fee_jpy integer NOT NULL
);

CREATE TABLE payments (
    contract_id  text NOT NULL,
    billing_date date NOT NULL,
    amount_jpy   integer NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (contract_id, billing_date)
);

-- One row per accepted cancellation. 'awaiting_contract' when the acceptance arrived before billing
-- saw the contract (two topics, no order between them): settled as soon as the contract arrives.
CREATE TABLE settlements (
    request_id     text PRIMARY KEY,
    contract_id    text NOT NULL,
    status         text NOT NULL CHECK (status IN ('awaiting_contract', 'issued', 'voided')),
    received_on    date NOT NULL,
    effective_date date NOT NULL,
    charges        jsonb,
    total_jpy      integer,
    paid_through   date,
    issued_at      timestamptz,
    voided_at      timestamptz
);
CREATE INDEX settlements_awaiting ON settlements (contract_id) WHERE status = 'awaiting_contract';
