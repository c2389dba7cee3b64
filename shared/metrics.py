"""Prometheus metrics every service exposes on /metrics."""

from prometheus_client import Counter, Gauge, Histogram

CONSUMED = Counter("cancelflow_messages_consumed_total", "Records consumed", ["service", "topic"])
PRODUCED = Counter("cancelflow_messages_produced_total", "Records published by the outbox relay",
                   ["service", "topic"])
FAILED = Counter("cancelflow_messages_failed_total", "Batches that failed and will be retried",
                 ["service", "topic"])
DEAD_LETTERED = Counter("cancelflow_messages_dead_lettered_total", "Records sent to a .dlq topic",
                        ["service", "topic"])
DUPLICATES = Counter("cancelflow_messages_duplicate_total", "Redelivered records skipped by the inbox",
                     ["service", "topic"])
PROCESSING = Histogram("cancelflow_batch_processing_seconds", "Time to handle one batch in one transaction",
                       ["service"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
LAG = Gauge("cancelflow_consumer_lag", "Records behind the end of the partition", ["service", "topic", "partition"])
OUTBOX_BACKLOG = Gauge("cancelflow_outbox_backlog", "Outbox rows not yet published", ["service"])
NOTIFICATIONS_SENT = Counter("cancelflow_notifications_sent_total", "E-mails sent", ["kind"])
NOTIFICATIONS_RESENT = Counter("cancelflow_notifications_resent_total",
                               "E-mails sent again, same Message-ID, after their notifier died unconfirmed", ["kind"])
