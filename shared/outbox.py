"""Transactional outbox: events are rows written in the caller's transaction; a relay publishes them.

A state change and the event announcing it commit together or not at all. The relay publishes in id
order with an idempotent producer and deletes rows only after Kafka acknowledged them, so a crash
between the two republishes (consumers' inboxes drop the duplicate) and never loses an event.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from shared import metrics
from shared.db import TRANSIENT_DB_ERRORS, is_lost
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

# Many rows in the order they were added (ids follow that order), then the NOTIFYs: one round trip that
# returns the new ids (for the relay in this process, see OutboxRelay.hand_over).
_INSERT_MANY = """
WITH added AS (
    INSERT INTO outbox (topic, key, value, headers)
    SELECT t, k, v, h::jsonb FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[]) WITH ORDINALITY AS u(t, k, v, h, n)
    ORDER BY n
    RETURNING id)
SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM added) AS ids,
       (SELECT count(pg_notify(c, '')) FROM unnest($5::text[]) AS c) AS notified
"""


class OutboxBuffer:
    """The outbox rows (and NOTIFY channels) of one transaction, written together just before it commits.

    The consumer opens one per batch (`buffered()`): every `add_raw` on that connection in that task
    lands here, in order, and `flush()` writes them with one statement inside the same transaction, so
    "state + outbox in one transaction" holds exactly as before, with one round trip instead of two per
    event. A record whose savepoint is rolled back is cut out with `mark()` / `rollback_to()`.
    """

    def __init__(self, conn: asyncpg.Connection, schema: str, relay: "OutboxRelay | None" = None) -> None:
        self.conn = conn
        self.schema = schema
        self.relay = relay
        self.rows: list[tuple[str, bytes | None, bytes, Sequence[Header]]] = []
        self.channels: set[str] = set()
        self.written: list[OutboxRow] = []  # flushed in this transaction, for the relay once it commits

    def add(self, topic: str, key: bytes | None, value: bytes, headers: Sequence[Header]) -> None:
        self.rows.append((topic, key, value, headers))

    def notify(self, channel_: str) -> None:
        self.channels.add(channel_)

    def mark(self) -> tuple[int, frozenset[str]]:
        return len(self.rows), frozenset(self.channels)

    def rollback_to(self, mark: tuple[int, frozenset[str]]) -> None:
        del self.rows[mark[0]:]
        self.channels = set(mark[1])

    async def flush(self) -> None:
        relay = self.relay if self.relay is not None and self.relay.active else None
        if self.rows and relay is None:
            self.channels.add(channel(self.schema))  # the relay (maybe another process's) reads them back
        if not self.channels and not self.rows:
            return
        # Headers as JSON text: a list of pairs would be taken for a two-dimensional array.
        ids = await self.conn.fetchval(
            _INSERT_MANY, [r[0] for r in self.rows], [r[1] for r in self.rows], [r[2] for r in self.rows],
            [orjson.dumps([list(h) for h in r[3]]).decode() for r in self.rows], sorted(self.channels))
        if relay is not None and ids:
            relay.expect(ids)  # not committed yet: the relay must not read them back meanwhile
            self.written += [OutboxRow(i, *r) for i, r in zip(ids, self.rows)]
        self.rows.clear()
        self.channels.clear()

    def committed(self) -> None:
        """The transaction committed: the relay in this process publishes the rows now."""
        written, self.written = self.written, []
        if written and self.relay is not None:
            self.relay.hand_over(written)

    def abandoned(self) -> None:
        """The transaction rolled back: its rows never existed."""
        written, self.written = self.written, []
        if written and self.relay is not None:
            self.relay.forget([row.id for row in written])


_BUFFER: ContextVar[OutboxBuffer | None] = ContextVar("cancelflow_outbox_buffer", default=None)


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    key: bytes | None
    value: bytes
    headers: Sequence[Header]


@asynccontextmanager
async def buffered(conn: asyncpg.Connection, schema: str, relay: "OutboxRelay | None" = None
                   ) -> AsyncIterator[OutboxBuffer]:
    """Collect this task's outbox writes on `conn`; written on leaving the block without an error.
    With `relay`, the caller calls `committed()` or `abandoned()` on the buffer once its transaction ended."""
    async with buffered_into(OutboxBuffer(conn, schema, relay)) as buffer:
        yield buffer


@asynccontextmanager
async def buffered_into(buffer: OutboxBuffer) -> AsyncIterator[OutboxBuffer]:
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


# Rows the relay did not get from this process's transactions (other processes, or before a restart). The
# ones this process is about to commit or has published but not deleted yet are left out by id.
_SCAN = "SELECT id, topic, key, value, headers FROM outbox WHERE id <> ALL($1::bigint[]) ORDER BY id LIMIT $2"
_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"
_NEXT = "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT $1"


class OutboxRelay:
    """Publishes the outbox. Rows written by this process's consumer and dispatcher transactions are handed
    over in memory once their transaction committed (`hand_over`), so a batch costs one produce and no
    read-back; the rows are deleted in bulk a moment later. Rows from elsewhere (the HTTP API, other
    processes, a previous run) are read from the table when a NOTIFY says so, on start and every
    `poll_ms`. A crash between publishing and deleting publishes a row again: consumers' inboxes skip it.
    Only one relay per schema publishes (an advisory lock), so per-key order is commit order."""

    DELETE_EVERY = 200      # published rows deleted together ...
    DELETE_AFTER_S = 0.05   # ... or once nothing was handed over for this long

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
        self.active = False           # holds the lock: transactions may hand their rows over
        self._in_flight: set[int] = set()   # written by a transaction of this process not ended yet
        self._handed: list = []              # committed, handed over, not published yet
        self._to_delete: list[int] = []      # published, not deleted yet
        self._scanned: deque[int] = deque(maxlen=10_000)  # recently read back and published
        self._scan = True

    # --- what transactions of this process tell the relay -------------------------------------
    def expect(self, ids: Sequence[int]) -> None:
        self._in_flight.update(ids)

    def forget(self, ids: Sequence[int]) -> None:
        self._in_flight.difference_update(ids)

    def hand_over(self, rows: Sequence[OutboxRow]) -> None:
        for row in rows:
            self._in_flight.discard(row.id)
        self._handed.extend(rows)
        self._wake.set()

    async def backlog(self) -> int:
        """Rows not published yet."""
        return max(0, await self.pool.fetchval("SELECT count(*) FROM outbox") - len(self._to_delete))

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
            # Only one relay per schema publishes, so per-key order is the order of the commits.
            lock_key = zlib.crc32(f"relay:{self.schema}".encode())
            while not await listen_conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
                await asyncio.sleep(1.0)

            def on_notify(*_: object) -> None:
                self._scan = True
                self._wake.set()

            await listen_conn.add_listener(channel(self.schema), on_notify)
            # Whatever was handed over before (a lost connection) is in the table: read it from there.
            self._handed, self._to_delete, self._scan = [], [], True
            self.active = True
            try:
                await self._loop(listen_conn)
            finally:
                self.active = False
                if not is_lost(listen_conn):
                    await listen_conn.remove_listener(channel(self.schema), on_notify)
                    await listen_conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
        finally:
            await self.pool.release(listen_conn, timeout=5)

    async def _loop(self, conn: asyncpg.Connection) -> None:
        while True:
            if self._handed:
                rows, self._handed = self._handed, []
                if self._scanned:
                    # A commit that landed just as a scan read the table: already published by the scan.
                    scanned = set(self._scanned)
                    rows = [r for r in rows if r.id not in scanned]
                await self._publish(rows)
                self._to_delete += [r.id for r in rows]
                if len(self._to_delete) >= self.DELETE_EVERY:
                    await self._delete(conn)
                continue
            if self._scan:
                self._scan = False
                await self._delete(conn)
                # Handed-over rows are not waiting here: they were published just above.
                rows = _rows(await conn.fetch(_SCAN, list(self._in_flight), self.batch_size))
                if rows:
                    await self._publish(rows)
                    self._to_delete += [r.id for r in rows]
                    self._scanned.extend(r.id for r in rows)
                    self._scan = len(rows) == self.batch_size
                continue
            self._wake.clear()
            if self._handed or self._scan:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.DELETE_AFTER_S if self._to_delete else self.poll_s)
            except asyncio.TimeoutError:
                if self._to_delete:
                    await self._delete(conn)
                else:
                    self._scan = True  # the poll: rows whose NOTIFY was missed (a reconnect)
            if is_lost(conn):
                raise ConnectionError("listen connection closed")

    async def _delete(self, conn: asyncpg.Connection) -> None:
        if self._to_delete:
            await conn.execute(_DELETE, self._to_delete)
            self._to_delete = []

    async def _publish(self, rows: Sequence[OutboxRow]) -> None:
        """Send rows in order and wait until Kafka acknowledged every one (idempotent producer, acks=all)."""
        futures = []
        for row in rows:
            futures.append(await self.producer.send(row.topic, row.value, key=row.key,
                                                    headers=[(k, v.encode()) for k, v in row.headers]))
        await asyncio.gather(*futures)
        for row in rows:
            metrics.PRODUCED.labels(self.service, row.topic).inc()
        self.published += len(rows)

    async def drain(self) -> None:
        """At shutdown, with the relay task stopped: delete what it published, publish what is left."""
        if self._to_delete:
            await self.pool.execute(_DELETE, self._to_delete)
            self._to_delete = []
        while await self.publish_batch():
            pass

    async def publish_batch(self) -> int:
        """One batch through the pool; how many were published."""
        rows = _rows(await self.pool.fetch(_NEXT, self.batch_size))
        if not rows:
            return 0
        await self._publish(rows)
        await self.pool.execute(_DELETE, [r.id for r in rows])
        return len(rows)


def _rows(records: Sequence[asyncpg.Record]) -> list[OutboxRow]:
    return [OutboxRow(r["id"], r["topic"], r["key"], r["value"], r["headers"]) for r in records]


__all__ = ["OutboxBuffer", "OutboxRelay", "OutboxRow", "add_event", "add_raw", "buffered", "buffered_into", "channel",
           "notify",
           "TRANSIENT_DB_ERRORS"]


async def emit_from(conn: asyncpg.Connection, runtime, data: EventData, *, key: str, correlation_id: str,
                    causation_id: str | None = None) -> Envelope:
    """Queue an event from a service's own loop (no incoming event), e.g. a scheduled completion."""
    return await add_event(conn, runtime.schema, data, key=key, producer=runtime.name,
                           correlation_id=correlation_id, causation_id=causation_id)
