"""Consuming with effect-once semantics: a batch of records is handled in one PostgreSQL transaction
(state + outbox rows + inbox rows), and the offsets are committed only after that transaction commits.

- A redelivered event (same event_id) is skipped by the inbox.
- A record that can never succeed (not JSON, unknown type, newer schema, invalid field, or a handler
  error that is not transient) is dead-lettered (`dlq`) and the batch goes on.
- A transient failure (database or broker down) rolls the whole batch back, pauses and raises, so
  FastStream's nack seeks back and the same records come again.

How a batch is written (few round trips, same guarantees):
- the fast path: one inbox INSERT for the whole batch, the store's `preload` (what the whole batch reads,
  in a statement or two), the handlers in record order, the outbox rows of the batch in one INSERT just
  before the commit. No savepoints.
- if any record fails, that attempt is rolled back entirely and the batch is handled again the careful
  way: a savepoint per record and no preload, so only the bad record is dead-lettered and the others keep
  their effects. Records that cannot even be decoded are dead-lettered on the fast path.
- stores defer the writes nobody reads back (`deferral`), so a batch's writes go as a few executemany.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import asyncpg

from shared import metrics
from shared.clock import Clock
from shared.db import TRANSIENT_DB_ERRORS, is_lost
from shared.events import Envelope, EventData, PoisonMessage, decode
from shared.messaging import inbox
from shared.messaging.deferral import BatchConnection
from shared.messaging.doorbell import Doorbell
from shared.messaging.dlq import dead_letter
from shared.messaging.outbox import Emitter, Outbox, outbox_transaction
from shared.messaging.relay import OutboxRelay

log = logging.getLogger(__name__)


class Store:
    """A service's unit of work for one transaction: it owns the service's SQL, loads what the handlers need
    and saves what they decided. Subclasses add the service's reads and writes."""

    def __init__(self, conn: BatchConnection, outbox: Outbox) -> None:
        self.conn = conn
        self.outbox = outbox

    async def preload(self, items: list[tuple[Envelope, Any]]) -> Any:
        """The batch read, on the fast path only, before the handlers: what the batch's handlers will read,
        for all of them at once. Every read must give the same answer without it (the careful path)."""
        return None


S = TypeVar("S", bound=Store)


@dataclass(slots=True)
class Context(Generic[S]):
    """What a handler gets besides the event: its service's store, the clock, and `emit`."""

    store: S
    envelope: Envelope
    clock: Clock
    outbox: Outbox
    producer: str

    def now(self) -> datetime:
        return self.clock.now()

    def emit(self, data: EventData, *, key: str) -> Envelope:
        """Emit an event caused by the one being handled, in this transaction (see `Emitter`)."""
        return Emitter(self.outbox, self.producer, self.envelope.correlation_id, str(self.envelope.event_id))(
            data, key=key)


Handler = Callable[[Context, Any], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    topics: Sequence[str]
    handlers: dict[str, Handler]
    store: Callable[[BatchConnection, Outbox], Store] = Store
    # 0: each batch as soon as a record arrives (the latency path). N > 0: records are collected for up to N ms
    # into one batch (one transaction, one round of statements) - for views that may lag a little.
    collect_ms: int = 0


class Resources(Protocol):
    """What a consumer needs of its process; filled in once the process is connected."""

    name: str
    schema: str
    clock: Clock
    pool: asyncpg.Pool | None
    relay: OutboxRelay | None
    doorbell: Doorbell


class _RecordFailed(Exception):
    """A record failed on the fast path: the attempt is rolled back and the batch redone record by record."""


@dataclass(slots=True)
class _Decoded:
    record: Any
    envelope: Envelope | None = None
    data: Any = None
    poison: str | None = None


async def _preload(store: Store, items: list[tuple[Envelope, Any]]) -> Any:
    return await store.preload(items)


class BatchConsumer:
    def __init__(self, resources: Resources, subscription: Subscription) -> None:
        self.resources = resources
        self.name = resources.name
        self.topics = tuple(subscription.topics)
        self.handlers = subscription.handlers
        self.store = subscription.store
        self.preload: Callable[[Store, list], Awaitable[Any]] = _preload  # replaceable, e.g. to observe it
        self._failures = 0
        self._conn: asyncpg.Connection | None = None

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """The consumer's own connection, kept between batches (batches of one subscriber run one at a
        time). Handing it back to the pool after each batch would cost a reset round trip per batch; it
        goes back, and is reset or closed by the pool, only after a batch failed."""
        pool = self.resources.pool
        if self._conn is None or is_lost(self._conn):
            self._conn = await pool.acquire()
        try:
            yield self._conn
        except BaseException:
            conn, self._conn = self._conn, None
            try:
                await pool.release(conn, timeout=5)
            except Exception:  # noqa: BLE001 - a broken connection: the pool closes it
                pass
            raise

    @asynccontextmanager
    async def _transaction(self, raw: asyncpg.Connection) -> AsyncIterator[tuple[BatchConnection, Outbox, Store]]:
        """The batch's transaction, outbox and store; once it committed, its rows go to the relay."""
        conn = BatchConnection(raw)
        outbox = Outbox(conn, self.resources.schema, self.resources.relay, self.resources.doorbell)
        try:
            async with raw.transaction():
                yield conn, outbox, self.store(conn, outbox)
                await outbox.flush()
        except BaseException:
            outbox.abandoned()
            raise
        outbox.committed()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self.resources.pool.release(conn, timeout=5)

    async def handle_batch(self, records: Sequence[Any]) -> None:
        started = time.perf_counter()
        try:
            decoded = [self._decode(r) for r in records]
            async with self._connection() as raw:
                try:
                    async with self._transaction(raw) as (conn, outbox, store):
                        duplicates = await self._fast(conn, outbox, store, decoded)
                    for topic in duplicates:
                        metrics.DUPLICATES.labels(self.name, topic).inc()
                except _RecordFailed:
                    async with self._transaction(raw) as (conn, outbox, store):
                        for item in decoded:
                            await self._careful(conn, outbox, store, item)
        except Exception as exc:
            if not isinstance(exc, TRANSIENT_DB_ERRORS):
                # Every record's own failure is caught and dead-lettered; what reaches here is the
                # database itself failing. The batch comes again (FastStream seeks back) after a pause.
                log.exception("batch failed outside a record; retrying")
            for record in records:
                metrics.FAILED.labels(self.name, record.topic).inc()
            self._failures += 1
            await asyncio.sleep(min(0.2 * 2 ** min(self._failures, 5), 5.0))
            raise
        self._failures = 0
        metrics.PROCESSING.labels(self.name).observe(time.perf_counter() - started)
        for record in records:
            metrics.CONSUMED.labels(self.name, record.topic).inc()

    @staticmethod
    def _decode(record: Any) -> _Decoded:
        try:
            envelope, data = decode(record.value)
        except PoisonMessage as exc:
            return _Decoded(record, poison=str(exc))
        return _Decoded(record, envelope, data)

    def _context(self, store: Store, outbox: Outbox, envelope: Envelope) -> Context:
        return Context(store, envelope, self.resources.clock, outbox, self.name)

    async def _fast(self, conn: BatchConnection, outbox: Outbox, store: Store, decoded: list[_Decoded]) -> list[str]:
        """The whole batch without savepoints; any record failing raises _RecordFailed. Returns the topics of
        the duplicates skipped (counted once the transaction committed)."""
        first_time = await inbox.record_all(conn, [(d.envelope, d.record) for d in decoded if d.envelope],
                                            self.resources.clock.now())
        fresh, taken = [], set()
        for item in decoded:
            if item.envelope is not None and item.envelope.event_id in first_time \
                    and item.envelope.event_id not in taken:
                taken.add(item.envelope.event_id)
                fresh.append((item.envelope, item.data))
        duplicates, undecodable = [], []
        try:
            if fresh:
                await self.preload(store, fresh)
            for item in decoded:
                if item.envelope is None:
                    undecodable.append(item)
                    continue
                if item.envelope.event_id not in first_time:
                    duplicates.append(item.record.topic)
                    continue
                first_time.discard(item.envelope.event_id)  # the same event twice in one batch: once
                handler = self.handlers.get(item.envelope.event_type)
                if handler is not None:
                    await handler(self._context(store, outbox, item.envelope), item.data)
            await conn.flush()  # the last deferred writes: a failure here is some record's too
        except TRANSIENT_DB_ERRORS:
            raise
        except Exception as exc:  # noqa: BLE001 - redone record by record, where it is dead-lettered
            raise _RecordFailed() from exc
        # Only now, so a fallback to the careful path does not log and count them twice. Their rows go to
        # the .dlq topics, whose order against the other topics' rows does not matter.
        for item in undecodable:
            dead_letter(outbox, item.record, item.poison or "undecodable", consumer=self.name)
        return duplicates

    async def _careful(self, conn: BatchConnection, outbox: Outbox, store: Store, item: _Decoded) -> None:
        """One record in its own savepoint: a bad record does not spoil the others."""
        record, envelope = item.record, item.envelope
        if envelope is None:
            dead_letter(outbox, record, item.poison or "undecodable", consumer=self.name)
            return
        handler = self.handlers.get(envelope.event_type)
        mark = outbox.mark()
        await conn.flush()
        try:
            async with conn.transaction():  # a savepoint; the record's deferred writes are sent inside it
                if not await inbox.record(conn, envelope, record, self.resources.clock.now()):
                    metrics.DUPLICATES.labels(self.name, record.topic).inc()
                    return
                if handler is not None:
                    await handler(self._context(store, outbox, envelope), item.data)
        except TRANSIENT_DB_ERRORS:
            raise
        except PoisonMessage as exc:
            outbox.rollback_to(mark)
            conn.discard()
            dead_letter(outbox, record, str(exc), consumer=self.name)
        except Exception as exc:  # noqa: BLE001 - a bug or bad data: park it with the reason, go on
            outbox.rollback_to(mark)
            conn.discard()
            log.exception("handler failed; dead-lettering",
                          extra={"event_id": str(envelope.event_id), "topic": record.topic,
                                 "partition": record.partition, "offset": record.offset})
            dead_letter(outbox, record, f"{type(exc).__name__}: {exc}", consumer=self.name)


@asynccontextmanager
async def store_transaction(resources: Resources, store: Callable[[BatchConnection, Outbox], S]) -> AsyncIterator[S]:
    """A transaction of the service's own (an HTTP call, a scheduled pass), with its store and outbox: the
    outbox rows are written just before the commit and handed to the relay after it."""
    async with resources.pool.acquire() as raw:
        conn = BatchConnection(raw)
        async with outbox_transaction(conn, resources.schema, resources.relay, resources.doorbell) as outbox:
            yield store(conn, outbox)
