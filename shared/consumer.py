"""Consuming with effect-once semantics: a batch of records is handled in one PostgreSQL transaction
(state + outbox rows + inbox rows), and the offsets are committed only after that transaction commits.

- A redelivered event (same event_id) is skipped by the inbox.
- A record that can never succeed (not JSON, unknown type, newer schema, invalid field, or a handler
  error that is not transient) is dead-lettered: its original bytes go to `<topic>.dlq` through the
  outbox, with the reason and its source topic/partition/offset in headers, and the batch goes on.
- A transient failure (database or broker down) rolls the whole batch back, waits with backoff and
  raises, so FastStream's NACK_ON_ERROR seeks back and the same records come again.

How a batch is written (few round trips, same guarantees):
- the fast path: one inbox INSERT for the whole batch, the handlers in record order, the outbox rows of
  the batch in one INSERT (with the relay's NOTIFY) just before the commit. No savepoints.
- if any record fails (poison or handler error), that attempt is rolled back entirely and the batch is
  handled again the careful way: a savepoint per record, so only the bad record is dead-lettered and the
  others keep their effects. Records that cannot even be decoded are dead-lettered on the fast path
  (they never touch the database before).
- a handler may `ctx.defer(sql, *args)` a write whose result it does not need: deferred statements are
  sent together (a run of the same statement as one executemany), and always before anything else is
  sent on the connection, so every statement still runs in the order the handlers wrote them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import asyncpg

from shared import metrics, topics
from shared.db import TRANSIENT_DB_ERRORS, is_lost
from shared.events import Envelope, EventData, PoisonMessage, decode
from shared.logging import mask_pii
from shared.outbox import OutboxBuffer, add_event, add_raw, buffered_into, notify

if TYPE_CHECKING:
    from shared.service import Runtime

log = logging.getLogger(__name__)

_INBOX_ONE = ("INSERT INTO processed_events (event_id, event_type, topic, partition, \"offset\")"
              " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING RETURNING true")
_INBOX_MANY = ("INSERT INTO processed_events (event_id, event_type, topic, partition, \"offset\")"
               " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[])"
               " ON CONFLICT (event_id) DO NOTHING RETURNING event_id")


class BatchConnection:
    """The batch's connection as the handlers see it: `defer()` queues a write whose result nobody reads;
    every other use of the connection first sends what is queued (a run of the same statement as one
    executemany round trip), so the statements run in exactly the order they were written."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.raw = conn
        self._queue: list[tuple[str, tuple]] = []

    def defer(self, sql: str, *args: Any) -> None:
        self._queue.append((sql, args))

    def discard(self) -> None:
        """Forget what is queued (its record's savepoint was rolled back)."""
        self._queue.clear()

    async def flush(self) -> None:
        queue, self._queue = self._queue, []
        i = 0
        while i < len(queue):
            sql, j = queue[i][0], i + 1
            while j < len(queue) and queue[j][0] == sql:
                j += 1
            if j - i == 1:
                await self.raw.execute(sql, *queue[i][1])
            else:
                await self.raw.executemany(sql, [args for _, args in queue[i:j]])
            i = j

    async def execute(self, *args: Any, **kwargs: Any) -> str:
        await self.flush()
        return await self.raw.execute(*args, **kwargs)

    async def executemany(self, *args: Any, **kwargs: Any) -> None:
        await self.flush()
        return await self.raw.executemany(*args, **kwargs)

    async def fetch(self, *args: Any, **kwargs: Any) -> list:
        await self.flush()
        return await self.raw.fetch(*args, **kwargs)

    async def fetchrow(self, *args: Any, **kwargs: Any) -> Any:
        await self.flush()
        return await self.raw.fetchrow(*args, **kwargs)

    async def fetchval(self, *args: Any, **kwargs: Any) -> Any:
        await self.flush()
        return await self.raw.fetchval(*args, **kwargs)

    def transaction(self, **kwargs: Any) -> "_FlushFirst":
        return _FlushFirst(self, self.raw.transaction(**kwargs))

    def is_in_transaction(self) -> bool:
        return self.raw.is_in_transaction()

    def is_closed(self) -> bool:
        return self.raw.is_closed()


class _FlushFirst:
    """A savepoint opened after the queued statements were sent (they must not be inside it)."""

    def __init__(self, conn: BatchConnection, transaction: Any) -> None:
        self.conn = conn
        self.transaction = transaction

    async def __aenter__(self) -> Any:
        await self.conn.flush()
        return await self.transaction.__aenter__()

    async def __aexit__(self, *exc: Any) -> Any:
        if exc[0] is None:
            try:
                await self.conn.flush()  # what the block deferred belongs inside it
            except BaseException as error:
                await self.transaction.__aexit__(type(error), error, error.__traceback__)
                raise
        return await self.transaction.__aexit__(*exc)


@dataclass
class Context:
    """What a handler gets besides the event: the open transaction and a way to emit events."""

    conn: BatchConnection
    envelope: Envelope
    topic: str
    partition: int
    offset: int
    runtime: "Runtime"
    # What the subscription's `prepare` returned for the whole batch (fast path only; None otherwise).
    prepared: Any = None

    def now(self) -> datetime:
        return self.runtime.clock.now()

    async def emit(self, data: EventData, *, key: str) -> Envelope:
        """Queue an event in the outbox, in this transaction, caused by the event being handled."""
        return await add_event(self.conn, self.runtime.schema, data, key=key, producer=self.runtime.name,
                               correlation_id=self.envelope.correlation_id,
                               causation_id=str(self.envelope.event_id))

    async def notify(self, channel: str) -> None:
        """NOTIFY `channel` when this transaction commits (once per batch, however often it is asked)."""
        await notify(self.conn, channel)

    def defer(self, sql: str, *args: Any) -> None:
        """Queue a write whose result is not needed; sent before anything else, in order (see module doc)."""
        self.conn.defer(sql, *args)


Handler = Callable[[Context, Any], Awaitable[None]]
# Runs once per batch on the fast path, before the handlers, with the (envelope, event) of every record
# handled for the first time: one statement for the batch instead of one per record. Its result is each
# handler's `ctx.prepared`; a handler must still work without it (the careful path passes None).
Prepare = Callable[[BatchConnection, "Runtime", list[tuple[Envelope, Any]]], Awaitable[Any]]


class _RecordFailed(Exception):
    """A record failed on the fast path: the attempt is rolled back and the batch redone record by record."""


@dataclass
class _Decoded:
    record: Any
    envelope: Envelope | None = None
    data: Any = None
    poison: str | None = None


class BatchConsumer:
    def __init__(self, runtime: "Runtime", topics_: Sequence[str], handlers: dict[str, Handler],
                 prepare: Prepare | None = None) -> None:
        self.runtime = runtime
        self.topics = tuple(topics_)
        self.handlers = handlers
        self.prepare = prepare
        self._failures = 0
        self._conn: asyncpg.Connection | None = None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """The consumer's own connection, kept between batches (batches of one subscriber run one at a
        time). Handing it back to the pool after each batch would cost a reset round trip per batch; it
        goes back, and is reset or closed by the pool, only after a batch failed."""
        if self._conn is None or is_lost(self._conn):
            self._conn = await self.runtime.pool.acquire()
        try:
            yield self._conn
        except BaseException:
            conn, self._conn = self._conn, None
            try:
                await self.runtime.pool.release(conn, timeout=5)
            except Exception:  # noqa: BLE001 - a broken connection: the pool closes it
                pass
            raise

    @asynccontextmanager
    async def _transaction(self, raw: asyncpg.Connection) -> AsyncIterator[tuple[BatchConnection, OutboxBuffer]]:
        """The batch's transaction and outbox buffer; once it committed, its rows go to the relay."""
        conn = BatchConnection(raw)
        outbox = OutboxBuffer(conn, self.runtime.schema, self.runtime.relay)
        try:
            async with raw.transaction(), buffered_into(outbox):
                yield conn, outbox
        except BaseException:
            outbox.abandoned()
            raise
        outbox.committed()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.runtime.pool.release(conn, timeout=5)

    async def handle_batch(self, records: Sequence[Any]) -> None:
        started = time.perf_counter()
        try:
            decoded = [self._decode(r) for r in records]
            async with self._connection() as raw:
                try:
                    async with self._transaction(raw) as (conn, outbox):
                        duplicates = await self._fast(conn, decoded, outbox)
                    for topic in duplicates:
                        metrics.DUPLICATES.labels(self.runtime.name, topic).inc()
                except _RecordFailed:
                    async with self._transaction(raw) as (conn, outbox):
                        for item in decoded:
                            await self._careful(conn, item, outbox)
        except Exception as exc:
            if not isinstance(exc, TRANSIENT_DB_ERRORS):
                # Every record's own failure is caught and dead-lettered; what reaches here is the
                # database itself failing. Retry the whole batch after a pause.
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

    @staticmethod
    def _decode(record: Any) -> _Decoded:
        try:
            envelope, data = decode(record.value)
        except PoisonMessage as exc:
            return _Decoded(record, poison=str(exc))
        return _Decoded(record, envelope, data)

    async def _fast(self, conn: BatchConnection, decoded: list[_Decoded], outbox: OutboxBuffer) -> list[str]:
        """The whole batch without savepoints; any record failing raises _RecordFailed. Returns the topics of
        the duplicates skipped (counted once the transaction committed)."""
        rows, seen = [], set()
        for item in decoded:
            if item.envelope is not None and item.envelope.event_id not in seen:
                seen.add(item.envelope.event_id)
                r = item.record
                rows.append((item.envelope.event_id, item.envelope.event_type, r.topic, r.partition, r.offset))
        first_time = set()
        if rows:
            inserted = await conn.fetch(_INBOX_MANY, *(list(c) for c in zip(*rows)))
            first_time = {row["event_id"] for row in inserted}
        prepared = None
        if self.prepare is not None:
            fresh, taken = [], set()
            for item in decoded:
                if item.envelope is not None and item.envelope.event_id in first_time \
                        and item.envelope.event_id not in taken:
                    taken.add(item.envelope.event_id)
                    fresh.append((item.envelope, item.data))
            try:
                prepared = await self.prepare(conn, self.runtime, fresh) if fresh else None
            except TRANSIENT_DB_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - some record is bad: found and dead-lettered record by record
                raise _RecordFailed() from exc
        duplicates, undecodable = [], []
        for item in decoded:
            record = item.record
            if item.envelope is None:
                undecodable.append(item)
                continue
            if item.envelope.event_id not in first_time:
                duplicates.append(record.topic)
                continue
            first_time.discard(item.envelope.event_id)  # the same event twice in one batch: once
            handler = self.handlers.get(item.envelope.event_type)
            if handler is None:
                continue
            try:
                await handler(Context(conn, item.envelope, record.topic, record.partition, record.offset,
                                      self.runtime, prepared), item.data)
            except TRANSIENT_DB_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - redone record by record, where it is dead-lettered
                raise _RecordFailed() from exc
        try:
            await conn.flush()  # the last deferred writes: a failure here is some record's too
        except TRANSIENT_DB_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _RecordFailed() from exc
        # Only now, so a fallback to the careful path does not log and count them twice. Their rows go to
        # the .dlq topics, whose order against the other topics' rows does not matter.
        for item in undecodable:
            await self.dead_letter(conn, item.record, item.poison or "undecodable")
        return duplicates

    async def _careful(self, conn: BatchConnection, item: _Decoded, outbox: OutboxBuffer) -> None:
        """One record in its own savepoint: a bad record does not spoil the others."""
        record, envelope = item.record, item.envelope
        if envelope is None:
            await self.dead_letter(conn, record, item.poison or "undecodable")
            return
        handler = self.handlers.get(envelope.event_type)
        mark = outbox.mark()
        await conn.flush()
        try:
            async with conn.transaction():  # a savepoint; the record's deferred writes are sent inside it
                first_time = await conn.fetchval(_INBOX_ONE, envelope.event_id, envelope.event_type, record.topic,
                                                 record.partition, record.offset)
                if not first_time:
                    metrics.DUPLICATES.labels(self.runtime.name, record.topic).inc()
                    return
                if handler is not None:
                    ctx = Context(conn, envelope, record.topic, record.partition, record.offset, self.runtime)
                    await handler(ctx, item.data)
        except TRANSIENT_DB_ERRORS:
            raise
        except PoisonMessage as exc:
            outbox.rollback_to(mark)
            conn.discard()
            await self.dead_letter(conn, record, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug or bad data: park it with the reason, go on
            outbox.rollback_to(mark)
            conn.discard()
            log.exception("handler failed; dead-lettering",
                          extra={"event_id": str(envelope.event_id), "topic": record.topic,
                                 "partition": record.partition, "offset": record.offset})
            await self.dead_letter(conn, record, f"{type(exc).__name__}: {exc}")

    async def dead_letter(self, conn: BatchConnection | asyncpg.Connection, record: Any, reason: str) -> None:
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
