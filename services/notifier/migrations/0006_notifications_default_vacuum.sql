-- 0005's fixed threshold, measured over the 500,000 soak (docs/performance.md, "Session 9"), vacuumed the
-- whole growing table about once a minute (105 vacuums), and the run's last tenths were slower than with
-- PostgreSQL's default: notifications goes back to the default. The dispatcher's queue needs a table of its
-- own that does not grow with the year (the next step), not a vacuum setting.
ALTER TABLE notifications RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
                                 autovacuum_analyze_scale_factor, autovacuum_analyze_threshold);
