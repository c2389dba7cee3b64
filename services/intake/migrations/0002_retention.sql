-- The retention loop (SPEC section 6): the offer a withdrawal was asked for, the offer it was made with
-- (from cancellation.withdrawn), and the upstream withdrawal submissions seen, so that the same
-- submission_id never acts twice.
ALTER TABLE requests ADD COLUMN withdrawal_offer text;
ALTER TABLE requests ADD COLUMN taken_offer text;

CREATE TABLE withdrawal_submissions (
    submission_id text PRIMARY KEY,
    request_id    text NOT NULL,
    taken_offer   text,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
