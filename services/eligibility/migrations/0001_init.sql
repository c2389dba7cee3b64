-- eligibility: the contract projection and every decision taken.
CREATE TABLE contracts (
    contract_id     text PRIMARY KEY,
    account_id      text NOT NULL,
    plan            text NOT NULL,
    monthly_fee_jpy integer NOT NULL,
    start_date      date NOT NULL,
    ended_on        date,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE cancellations (
    request_id              text PRIMARY KEY,
    contract_id             text NOT NULL,
    status                  text NOT NULL CHECK (status IN ('accepted', 'rejected', 'withdrawn', 'completed')),
    reason                  text NOT NULL,
    received_on             date NOT NULL,
    effective_date          date,
    first_anniversary       date,
    earliest_effective_date date,
    offers                  text[] NOT NULL DEFAULT '{}',
    codes                   text[] NOT NULL DEFAULT '{}',
    decided_at              timestamptz NOT NULL,
    closed_at               timestamptz
);

-- SPEC: a contract has at most one pending cancellation. The database enforces it too.
CREATE UNIQUE INDEX cancellations_one_pending ON cancellations (contract_id) WHERE status = 'accepted';
CREATE INDEX cancellations_due ON cancellations (effective_date) WHERE status = 'accepted';
