"""Transactional outbox: events are rows written in the caller's transaction; a relay publishes them.

A state change and the event announcing it commit together or not at all. The relay publishes in id
order with an idempotent producer and deletes rows only after Kafka acknowledged them, so a crash
between the two republishes (consumers' inboxes drop the duplicate) and never loses an event.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from shared import metrics
from shared.db import TRANSIENT_DB_ERRORS
from shared.events import Envelope, EventData, new_envelope

log = logging.getLogger(__name__)

Header = tuple[str, str]


def channel(schema: str) -> str:
    return f"outbox_{schema}"


# One row, and the NOTIFY that wakes the relay at commit, in one round trip.
_INSERT_ONE = """
WITH added AS (INSERT INTO outbox (topic, key, value, headers) VALUES ($1, $2, $3, $4) RETURNING 1)
SELECT pg_notify($5, '')
"""

# Many rows in the order they were added (ids follow that order), then the NOTIFYs: one round trip.
_INSERT_MANY = """
WITH added AS (
    INSERT INTO outbox (topic, key, value, headers)
    SELECT t, k, v, h::jsonb FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[]) WITH ORDINALITY AS u(t, k, v, h, n)
    ORDER BY n
    RETURNING 1)
SELECT pg_notify(c, '') FROM unnest($5::text[]) AS c
"""


class OutboxBuffer:
    """The outbox rows (and NOTIFY channels) of one transaction, written together just before it commits.

    The consumer opens one per batch (`buffered()`): every `add_raw` on that connection in that task
    lands here, in order, and `flush()` writes them with one statement inside the same transaction, so
    "state + outbox in one transaction" holds exactly as before, with one round trip instead of two per
    event. A record whose savepoint is rolled back is cut out with `mark()` / `rollback_to()`.
    """

    def __init__(self, conn: asyncpg.Connection, schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self.rows: list[tuple[str, bytes | None, bytes, str]] = []
        self.channels: set[str] = set()

    def add(self, topic: str, key: bytes | None, value: bytes, headers: Sequence[Header]) -> None:
        # Headers as JSON text: a list of pairs would be taken for a two-dimensional array.
        self.rows.append((topic, key, value, orjson.dumps([list(h) for h in headers]).decode()))

    def notify(self, channel_: str) -> None:
        self.channels.add(channel_)

    def mark(self) -> tuple[int, frozenset[str]]:
        return len(self.rows), frozenset(self.channels)

    def rollback_to(self, mark: tuple[int, frozenset[str]]) -> None:
        del self.rows[mark[0]:]
        self.channels = set(mark[1])

    async def flush(self) -> None:
        if self.rows:
            self.channels.add(channel(self.schema))
        if not self.channels:
            return
        columns = list(zip(*self.rows)) if self.rows else [(), (), (), ()]
        await self.conn.execute(_INSERT_MANY, *(list(c) for c in columns), sorted(self.channels))
        self.rows.clear()
        self.channels.clear()


_BUFFER: ContextVar[OutboxBuffer | None] = ContextVar("cancelflow_outbox_buffer", default=None)


@asynccontextmanager
async def buffered(conn: asyncpg.Connection, schema: str) -> AsyncIterator[OutboxBuffer]:
    """Collect this task's outbox writes on `conn`; written on leaving the block without an error."""
    buffer = OutboxBuffer(conn, schema)
    token = _BUFFER.set(buffer)
    try:
        yield buffer
        await buffer.flush()
    finally:
        _BUFFER.reset(token)


def _buffer_for(conn: asyncpg.Connection) -> OutboxBuffer | None:
    buffer = _BUFFER.get()
    return buffer if buffer is not None and buffer.conn is conn else None


async def add_raw(conn: asyncpg.Connection, schema: str, topic: str, key: bytes | None, value: bytes,
                  headers: Sequence[Header] = ()) -> None:
    buffer = _buffer_for(conn)
    if buffer is not None:
        buffer.add(topic, key, value, headers)
        return
    # The NOTIFY is delivered at commit, so the relay wakes exactly when there is something to publish.
    await conn.execute(_INSERT_ONE, topic, key, value, [list(h) for h in headers], channel(schema))


async def notify(conn: asyncpg.Connection, channel_: str) -> None:
    """NOTIFY `channel_` when the transaction commits (once per batch when buffered)."""
    buffer = _buffer_for(conn)
    if buffer is not None:
        buffer.notify(channel_)
    else:
        await conn.execute("SELECT pg_notify($1, '')", channel_)


async def add_event(conn: asyncpg.Connection, schema: str, data: EventData, *, key: str, producer: str,
                    correlation_id: str, causation_id: str | None) -> Envelope:
    envelope = new_envelope(data, producer=producer, correlation_id=correlation_id, causation_id=causation_id)
    await add_raw(conn, schema, data.topic, key.encode(), envelope.to_bytes(),
                  [("event_type", data.event_type), ("schema_version", str(data.schema_version))])
    return envelope


_NEXT = "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT $1"
# The snapshot still shows the rows being deleted: they are left out by id.
_DELETE_AND_NEXT = """
WITH published AS (DELETE FROM outbox WHERE id = ANY($1::bigint[]))
SELECT id, topic, key, value, headers FROM outbox WHERE id <> ALL($1::bigint[]) ORDER BY id LIMIT $2
"""


class OutboxRelay:
    def __init__(self, *, pool: asyncpg.Pool, producer: AIOKafkaProducer, schema: str, service: str,
                 batch_size: int = 500, poll_ms: int = 500) -> None:
        self.pool = pool
        self.producer = producer
        self.schema = schema
        self.service = service
        self.batch_size = batch_size
        self.poll_s = poll_ms / 1000
        self._wake = asyncio.Event()
        self.published = 0

    async def backlog(self) -> int:
        return await self.pool.fetchval("SELECT count(*) FROM outbox")

    async def run(self) -> None:
        """Publish forever; survives database and broker restarts."""
        backoff = 0.2
        while True:
            try:
                await self._run_listening()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged, retried with backoff: the relay must not die
                log.warning("outbox relay paused: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _run_listening(self) -> None:
        listen_conn = await self.pool.acquire()
        try:
            # Only one relay per schema publishes, so per-key order is the outbox's id order.
            lock_key = zlib.crc32(f"relay:{self.schema}".encode())
            while not await listen_conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
                await asyncio.sleep(1.0)
            def on_notify(*_: object) -> None:
                self._wake.set()

            await listen_conn.add_listener(channel(self.schema), on_notify)
            try:
                # The relay's own connection does its queries too: no pool round trips per batch, and the
                # rows just published are deleted in the same statement that reads the next ones.
                rows = await listen_conn.fetch(_NEXT, self.batch_size)
                while True:
                    if rows:
                        await self._publish(rows)
                        rows = await listen_conn.fetch(_DELETE_AND_NEXT, [r["id"] for r in rows], self.batch_size)
                        continue
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.poll_s)
                    except asyncio.TimeoutError:
                        pass
                    self._wake.clear()
                    if listen_conn.is_closed():
                        raise ConnectionError("listen connection closed")
                    rows = await listen_conn.fetch(_NEXT, self.batch_size)
            finally:
                if not listen_conn.is_closed():
                    await listen_conn.remove_listener(channel(self.schema), on_notify)
                    await listen_conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
        finally:
            await self.pool.release(listen_conn, timeout=5)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> None:
        """Send rows in id order and wait until Kafka acknowledged every one (idempotent producer, acks=all)."""
        futures = []
        for row in rows:
            headers = [(k, v.encode()) for k, v in row["headers"]]
            futures.append(await self.producer.send(row["topic"], row["value"], key=row["key"], headers=headers))
        await asyncio.gather(*futures)
        for row in rows:
            metrics.PRODUCED.labels(self.service, row["topic"]).inc()
        self.published += len(rows)

    async def publish_batch(self) -> int:
        """One batch through the pool (used to drain the outbox at shutdown); how many were published."""
        rows = await self.pool.fetch(_NEXT, self.batch_size)
        if not rows:
            return 0
        await self._publish(rows)
        await self.pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
        return len(rows)


__all__ = ["OutboxBuffer", "OutboxRelay", "add_event", "add_raw", "buffered", "channel", "notify",
           "TRANSIENT_DB_ERRORS"]


async def emit_from(conn: asyncpg.Connection, runtime, data: EventData, *, key: str, correlation_id: str,
                    causation_id: str | None = None) -> Envelope:
    """Queue an event from a service's own loop (no incoming event), e.g. a scheduled completion."""
    return await add_event(conn, runtime.schema, data, key=key, producer=runtime.name,
                           correlation_id=correlation_id, causation_id=causation_id)
