-- intake: every request received, and its status view built from the downstream topics.
CREATE TABLE requests (
    request_id              text PRIMARY KEY,
    contract_id             text NOT NULL,
    source                  text NOT NULL CHECK (source IN ('http', 'kafka')),
    submission_id           text,
    body_hash               text NOT NULL,
    form                    jsonb NOT NULL,
    received_at             timestamptz NOT NULL,
    received_on             date NOT NULL,
    status                  text NOT NULL DEFAULT 'received',
    reason                  text NOT NULL,
    effective_date          date,
    first_anniversary       date,
    codes                   text[] NOT NULL DEFAULT '{}',
    earliest_effective_date date,
    offers                  text[] NOT NULL DEFAULT '{}',
    settlement              jsonb,
    notifications           jsonb NOT NULL DEFAULT '[]'::jsonb,
    first_answer_at         timestamptz,
    withdrawal_requested_at timestamptz,
    withdrawal_refused      text,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    -- The same Idempotency-Key / submission_id never creates a second request.
    UNIQUE (source, submission_id)
);
CREATE INDEX requests_contract ON requests (contract_id);
