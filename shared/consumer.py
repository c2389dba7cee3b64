"""Consuming with effect-once semantics: a batch of records is handled in one PostgreSQL transaction
(state + outbox rows + inbox rows), and the offsets are committed only after that transaction commits.

- A redelivered event (same event_id) is skipped by the inbox.
- A record that can never succeed (not JSON, unknown type, newer schema, invalid field, or a handler
  error that is not transient) is dead-lettered: its original bytes go to `<topic>.dlq` through the
  outbox, with the reason and its source topic/partition/offset in headers, and the batch goes on.
- A transient failure (database or broker down) rolls the whole batch back, waits with backoff and
  raises, so FastStream's NACK_ON_ERROR seeks back and the same records come again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import asyncpg

from shared import metrics, topics
from shared.db import TRANSIENT_DB_ERRORS
from shared.events import Envelope, EventData, PoisonMessage, decode
from shared.logging import mask_pii
from shared.outbox import add_event, add_raw

if TYPE_CHECKING:
    from shared.service import Runtime

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What a handler gets besides the event: the open transaction and a way to emit events."""

    conn: asyncpg.Connection
    envelope: Envelope
    topic: str
    partition: int
    offset: int
    runtime: "Runtime"

    def now(self) -> datetime:
        return self.runtime.clock.now()

    async def emit(self, data: EventData, *, key: str) -> Envelope:
        """Queue an event in the outbox, in this transaction, caused by the event being handled."""
        return await add_event(self.conn, self.runtime.schema, data, key=key, producer=self.runtime.name,
                               correlation_id=self.envelope.correlation_id,
                               causation_id=str(self.envelope.event_id))


Handler = Callable[[Context, Any], Awaitable[None]]


class BatchConsumer:
    def __init__(self, runtime: "Runtime", topics_: Sequence[str], handlers: dict[str, Handler]) -> None:
        self.runtime = runtime
        self.topics = tuple(topics_)
        self.handlers = handlers
        self._failures = 0

    async def handle_batch(self, records: Sequence[Any]) -> None:
        started = time.perf_counter()
        try:
            async with self.runtime.pool.acquire() as conn, conn.transaction():
                for record in records:
                    await self._handle_one(conn, record)
        except Exception as exc:
            if not isinstance(exc, TRANSIENT_DB_ERRORS):
                # The per-record savepoints catch everything a record can cause; what reaches here is
                # the database itself failing. Retry the whole batch after a pause.
                log.exception("batch failed outside a record; retrying")
            for record in records:
                metrics.FAILED.labels(self.runtime.name, record.topic).inc()
            self._failures += 1
            await asyncio.sleep(min(0.2 * 2 ** min(self._failures, 5), 5.0))
            raise
        self._failures = 0
        metrics.PROCESSING.labels(self.runtime.name).observe(time.perf_counter() - started)
        for record in records:
            metrics.CONSUMED.labels(self.runtime.name, record.topic).inc()

    async def _handle_one(self, conn: asyncpg.Connection, record: Any) -> None:
        try:
            envelope, data = decode(record.value)
        except PoisonMessage as exc:
            await self.dead_letter(conn, record, str(exc))
            return
        handler = self.handlers.get(envelope.event_type)
        try:
            async with conn.transaction():  # a savepoint: one bad record does not spoil the batch
                first_time = await conn.fetchval(
                    "INSERT INTO processed_events (event_id, event_type, topic, partition, \"offset\")"
                    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING RETURNING true",
                    envelope.event_id, envelope.event_type, record.topic, record.partition, record.offset)
                if not first_time:
                    metrics.DUPLICATES.labels(self.runtime.name, record.topic).inc()
                    return
                if handler is not None:
                    ctx = Context(conn, envelope, record.topic, record.partition, record.offset, self.runtime)
                    await handler(ctx, data)
        except TRANSIENT_DB_ERRORS:
            raise
        except PoisonMessage as exc:
            await self.dead_letter(conn, record, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug or bad data: park it with the reason, go on
            log.exception("handler failed; dead-lettering",
                          extra={"event_id": str(envelope.event_id), "topic": record.topic,
                                 "partition": record.partition, "offset": record.offset})
            await self.dead_letter(conn, record, f"{type(exc).__name__}: {exc}")

    async def dead_letter(self, conn: asyncpg.Connection, record: Any, reason: str) -> None:
        reason = mask_pii(reason)[:2000]
        log.warning("dead-lettered: %s", reason,
                    extra={"topic": record.topic, "partition": record.partition, "offset": record.offset})
        headers = [
            ("dlq.reason", reason),
            ("dlq.source.topic", record.topic),
            ("dlq.source.partition", str(record.partition)),
            ("dlq.source.offset", str(record.offset)),
            ("dlq.consumer", self.runtime.name),
            ("dlq.failed_at", datetime.now(timezone.utc).isoformat()),
        ]
        # The original headers travel along, so a replay carries them again.
        for key, value in record.headers or ():
            if not key.startswith("dlq."):
                headers.append((key, value.decode("utf-8", "replace") if isinstance(value, bytes) else value))
        await add_raw(conn, self.runtime.schema, topics.dlq(record.topic), record.key, record.value or b"",
                      headers)
        metrics.DEAD_LETTERED.labels(self.runtime.name, record.topic).inc()
