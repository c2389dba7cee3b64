"""Transactional outbox: events are rows written in the caller's transaction; a relay publishes them.

A state change and the event announcing it commit together or not at all. The relay publishes in id
order with an idempotent producer and deletes rows only after Kafka acknowledged them, so a crash
between the two republishes (consumers' inboxes drop the duplicate) and never loses an event.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Sequence

import asyncpg
from aiokafka import AIOKafkaProducer

from shared import metrics
from shared.db import TRANSIENT_DB_ERRORS
from shared.events import Envelope, EventData, new_envelope

log = logging.getLogger(__name__)

Header = tuple[str, str]


def channel(schema: str) -> str:
    return f"outbox_{schema}"


async def add_raw(conn: asyncpg.Connection, schema: str, topic: str, key: bytes | None, value: bytes,
                  headers: Sequence[Header] = ()) -> None:
    await conn.execute(
        "INSERT INTO outbox (topic, key, value, headers) VALUES ($1, $2, $3, $4)",
        topic, key, value, [list(h) for h in headers])
    # Delivered at commit, so the relay wakes exactly when there is something to publish.
    await conn.execute(f"NOTIFY {channel(schema)}")


async def add_event(conn: asyncpg.Connection, schema: str, data: EventData, *, key: str, producer: str,
                    correlation_id: str, causation_id: str | None) -> Envelope:
    envelope = new_envelope(data, producer=producer, correlation_id=correlation_id, causation_id=causation_id)
    await add_raw(conn, schema, data.topic, key.encode(), envelope.to_bytes(),
                  [("event_type", data.event_type), ("schema_version", str(data.schema_version))])
    return envelope


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
                while True:
                    sent = await self.publish_batch()
                    if sent < self.batch_size:
                        try:
                            await asyncio.wait_for(self._wake.wait(), self.poll_s)
                        except asyncio.TimeoutError:
                            pass
                        self._wake.clear()
                        if listen_conn.is_closed():
                            raise ConnectionError("listen connection closed")
            finally:
                if not listen_conn.is_closed():
                    await listen_conn.remove_listener(channel(self.schema), on_notify)
                    await listen_conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
        finally:
            await self.pool.release(listen_conn, timeout=5)

    async def publish_batch(self) -> int:
        rows = await self.pool.fetch(
            "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT $1", self.batch_size)
        if not rows:
            return 0
        futures = []
        for row in rows:
            headers = [(k, v.encode()) for k, v in row["headers"]]
            futures.append(await self.producer.send(row["topic"], row["value"], key=row["key"], headers=headers))
        await asyncio.gather(*futures)
        await self.pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
        for row in rows:
            metrics.PRODUCED.labels(self.service, row["topic"]).inc()
        self.published += len(rows)
        return len(rows)


__all__ = ["OutboxRelay", "add_event", "add_raw", "channel", "TRANSIENT_DB_ERRORS"]


async def emit_from(conn: asyncpg.Connection, runtime, data: EventData, *, key: str, correlation_id: str,
                    causation_id: str | None = None) -> Envelope:
    """Queue an event from a service's own loop (no incoming event), e.g. a scheduled completion."""
    return await add_event(conn, runtime.schema, data, key=key, producer=runtime.name,
                           correlation_id=correlation_id, causation_id=causation_id)
