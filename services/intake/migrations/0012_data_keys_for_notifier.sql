-- notifier opens the sealed customers at send time with these keys, read in its claim of the due mails:
-- it may read this view (the live keys only) and nothing else of intake's. An erased key is gone from it at
-- once. Without a notifier role (every service as one admin) there is nothing to grant.
CREATE VIEW data_keys AS SELECT contract_id, key_id, key FROM subject_keys WHERE key IS NOT NULL;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'notifier') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO notifier', current_schema());
        GRANT SELECT ON data_keys TO notifier;
    END IF;
END $$;
