-- Signed upstream calls seen, until their timestamp leaves the tolerance: a replay, to any instance, is refused.
CREATE TABLE seen_signatures (
    digest     text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX seen_signatures_expiry ON seen_signatures (expires_at);
