-- notifier: who to write to, what it knows of each request, and every notification due or sent.
CREATE TABLE recipients (
    request_id    text PRIMARY KEY,
    contract_id   text NOT NULL,
    customer_name text NOT NULL,
    email         text NOT NULL
);

CREATE TABLE requests (
    request_id              text PRIMARY KEY,
    contract_id             text NOT NULL,
    status                  text NOT NULL,
    accepted_at             timestamptz,
    effective_date          date,
    offers                  text[] NOT NULL DEFAULT '{}',
    codes                   text[] NOT NULL DEFAULT '{}',
    earliest_effective_date date,
    total_jpy               integer,
    paid_through            date,
    settlement_status       text
);

-- (request, kind, due time) is unique: each is sent exactly once, across restarts.
CREATE TABLE notifications (
    id          bigserial PRIMARY KEY,
    request_id  text NOT NULL,
    kind        text NOT NULL,
    due_at      timestamptz NOT NULL,
    days_before integer,
    status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'cancelled')),
    sent_at     timestamptz,
    message_id  text,
    UNIQUE (request_id, kind, due_at)
);
CREATE INDEX notifications_due ON notifications (due_at) WHERE status = 'pending';
