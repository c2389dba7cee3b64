"""Dead letters: a record that can never succeed goes, with its original bytes, to `<topic>.dlq` through
the outbox of the same transaction, with the reason and where it came from in headers."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from shared import metrics, topics
from shared.messaging.outbox import Outbox
from shared.pii import mask_pii

log = logging.getLogger(__name__)


def dead_letter(outbox: Outbox, record: Any, reason: str, *, consumer: str) -> None:
    reason = mask_pii(reason)[:2000]
    log.warning("dead-lettered: %s", reason,
                extra={"topic": record.topic, "partition": record.partition, "offset": record.offset})
    headers = [
        ("dlq.reason", reason),
        ("dlq.source.topic", record.topic),
        ("dlq.source.partition", str(record.partition)),
        ("dlq.source.offset", str(record.offset)),
        ("dlq.consumer", consumer),
        ("dlq.failed_at", datetime.now(timezone.utc).isoformat()),
    ]
    # The original headers travel along, so a replay carries them again.
    for key, value in record.headers or ():
        if not key.startswith("dlq."):
            headers.append((key, value.decode("utf-8", "replace") if isinstance(value, bytes) else value))
    outbox.add(topics.dlq(record.topic), record.key, record.value or b"", headers)
    metrics.DEAD_LETTERED.labels(consumer, record.topic).inc()
