"""The outbox relay: publishes committed outbox rows to Kafka, in commit order, then deletes them.

It publishes with an idempotent producer and deletes rows only after Kafka acknowledged them, so a crash
between the two republishes (consumers' inboxes drop the duplicate) and never loses an event.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import deque
from collections.abc import Sequence

import asyncpg
from aiokafka import AIOKafkaProducer

from shared import metrics
from shared.db import UNFLUSHED, is_lost, keeps_session_state
from shared.messaging.outbox import OutboxRow, channel
from shared.retry import backing_off

log = logging.getLogger(__name__)


# Rows the relay did not get from this process's transactions (other processes, or before a restart). The
# ones this process is about to commit or has published but not deleted yet are left out by id.
_SCAN = "SELECT id, topic, key, value, headers FROM outbox WHERE id <> ALL($1::bigint[]) ORDER BY id LIMIT $2"
# Published rows are deleted without waiting for the disk: a delete that a crash of PostgreSQL loses only
# publishes its rows again, which consumers' inboxes drop (as after a crash between publishing and deleting).
_DELETE = f"WITH gone AS (DELETE FROM outbox WHERE id = ANY($1::bigint[])) {UNFLUSHED}"
_NEXT = "SELECT id, topic, key, value, headers FROM outbox ORDER BY id LIMIT $1"
# A committed row older than the handed-over ones that this relay has not published (another instance's
# commit, or this one's while its relay was not active): it goes first. Checked here only for rows whose
# transaction did not check it in its own outbox INSERT (shared.messaging.outbox._INSERT_CHECKED). This
# process's uncommitted rows ($2 has them, with the published and the handed-over ones) are not older by
# commit. Counted in one snapshot: `id <> ALL($2)` would compare every row below with every known id,
# hundreds by hundreds. The rows published since the last check ($3) are deleted by the same statement, in
# its round trip rather than one of their own; its snapshot still sees them, and $2 counts them as known.
_OLDER = ("WITH gone AS (DELETE FROM outbox WHERE id = ANY($3::bigint[])),"
          f" unflushed AS ({UNFLUSHED})"
          " SELECT (SELECT count(*) FROM outbox WHERE id < $1)"
          " > (SELECT count(*) FROM outbox WHERE id = ANY($2::bigint[])) FROM unflushed")


def _lock_key(schema: str) -> int:
    return zlib.crc32(f"relay:{schema}".encode())


class OutboxRelay:
    """Publishes the outbox. Rows written by this process's consumer and dispatcher transactions are handed
    over in memory once their transaction committed (`hand_over`), so a batch costs one produce and no
    read-back; the rows are deleted in bulk a moment later. Rows from elsewhere (the HTTP API, other
    processes, a previous run) are read from the table when a NOTIFY says so, on start and every
    `poll_ms`. A crash between publishing and deleting publishes a row again: consumers' inboxes skip it.
    Only one relay per schema publishes (an advisory lock), and it publishes in id order: handed-over rows
    wait while an older row is in the table (a partition's earlier records committed by another instance
    before a rebalance gave it to this one), so per-key order is commit order whoever committed. A
    transaction of this process looks for such a row in its own outbox INSERT, against what the relay knows
    (`known`), so its rows normally go without a check of the relay's own."""

    # Published rows deleted together (every transaction's in-order check reads the rows still there) ...
    DELETE_EVERY = 50
    DELETE_AFTER_S = 0.05   # ... or once nothing was handed over for this long
    # The table vacuumed by the relay each time it has deleted this many rows: the in-order check and the
    # scan read the index from its start, where the deleted rows' entries stay until a vacuum, and
    # autovacuum comes once a minute at best (a minute at 100 requests/s leaves 6,000 of them).
    VACUUM_EVERY = 1000

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
        self.checked = 0              # handed-over batches the relay checked itself (their transaction did not)
        self.active = False           # holds the lock: transactions may hand their rows over
        self._in_flight: set[int] = set()   # written by a transaction of this process not ended yet
        self._handed: list = []              # committed, handed over, not published yet
        self._to_delete: list[int] = []      # published, not deleted yet
        self._scanned: deque[int] = deque(maxlen=10_000)  # recently read back and published
        self._scan = True
        self._deleted = 0                    # since the last vacuum
        self._vacuum: asyncio.Task | None = None
        self.epoch = 0                       # activations: a transaction's check holds within one
        self._publishing: list[int] = []     # sent, not acknowledged yet
        self._unchecked: set[int] = set()    # handed over without their transaction's check

    # --- what transactions of this process tell the relay -------------------------------------
    def known(self) -> list[int]:
        """The rows in flight in this process's transactions, and those the relay is to publish, is
        publishing or has published: any other committed row in the table it has to read back first."""
        return [*self._in_flight, *(r.id for r in self._handed), *self._publishing, *self._to_delete]

    def expect(self, ids: Sequence[int]) -> None:
        self._in_flight.update(ids)

    def forget(self, ids: Sequence[int]) -> None:
        self._in_flight.difference_update(ids)

    def hand_over(self, rows: Sequence[OutboxRow], *, in_order_at: int | None = None) -> None:
        """Rows of a committed transaction. `in_order_at`: the epoch in which its outbox INSERT found no
        committed row this relay does not know; otherwise the relay checks before publishing them."""
        for row in rows:
            self._in_flight.discard(row.id)
        if in_order_at != self.epoch:
            self._unchecked.update(row.id for row in rows)
        self._handed.extend(rows)
        self._wake.set()

    async def backlog(self) -> int:
        """Rows not published yet."""
        return max(0, await self.pool.fetchval("SELECT count(*) FROM outbox") - len(self._to_delete))

    async def run(self) -> None:
        """Publish forever; survives database and broker restarts (paused with backoff, never dead)."""
        async for attempt in backing_off("the outbox relay's database and broker"):
            with attempt:
                await self._run_listening()

    async def _run_listening(self) -> None:
        listen_conn = await self.pool.acquire()
        keeps_session_state(listen_conn)
        try:
            # Only one relay per schema publishes, so per-key order is the order of the commits.
            lock_key = _lock_key(self.schema)
            while not await listen_conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key):
                await asyncio.sleep(1.0)

            def on_notify(*_: object) -> None:
                self._scan = True
                self._wake.set()

            await listen_conn.add_listener(channel(self.schema), on_notify)
            # Whatever was handed over before (a lost connection) is in the table: read it from there.
            self._handed, self._to_delete, self._scan = [], [], True
            self._unchecked.clear()
            self.epoch += 1
            self.active = True
            try:
                await self._loop(listen_conn)
            finally:
                self.active = False
                if self._vacuum is not None:
                    self._vacuum.cancel()
                if not is_lost(listen_conn):
                    await listen_conn.remove_listener(channel(self.schema), on_notify)
                    await listen_conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
        finally:
            await self.pool.release(listen_conn, timeout=5)

    async def _older_committed(self, conn: asyncpg.Connection, rows: list) -> bool:
        """Whether a committed row below `rows` is one this relay does not know (see `_OLDER`); the rows
        published so far are deleted meanwhile."""
        top = max(r.id for r in rows)
        known = [i for i in (*self._to_delete, *(r.id for r in rows), *self._in_flight) if i < top]
        older = await conn.fetchval(_OLDER, top, known, self._to_delete)
        self.checked += 1
        self._published_rows_deleted()
        return older

    async def _loop(self, conn: asyncpg.Connection) -> None:
        while True:
            if self._handed:
                if self._scanned:
                    # A commit that landed just as a scan read the table: already published by the scan.
                    scanned = set(self._scanned)
                    self._handed = [r for r in self._handed if r.id not in scanned]
                    self._unchecked.difference_update(scanned)
                rows = list(self._handed)
                if rows and (self._unchecked.isdisjoint(r.id for r in rows)
                             or not await self._older_committed(conn, rows)):
                    del self._handed[:len(rows)]  # more may have been handed over meanwhile
                    self._unchecked.difference_update(r.id for r in rows)
                    await self._publish(rows)
                    self._to_delete += [r.id for r in rows]
                    if len(self._to_delete) >= self.DELETE_EVERY:
                        await self._delete(conn)
                    continue
                self._scan = self._scan or bool(rows)  # older rows first: the scan reads the table in id order
            if self._scan:
                self._scan = False
                await self._delete(conn)
                # Handed-over rows waiting are read too, in id order after the older ones (then skipped above).
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
            self._published_rows_deleted()

    def _published_rows_deleted(self) -> None:
        """`_to_delete` is gone from the table: counted towards the next vacuum."""
        self._deleted += len(self._to_delete)
        self._to_delete = []
        if self._deleted >= self.VACUUM_EVERY and (self._vacuum is None or self._vacuum.done()):
            self._deleted = 0
            self._vacuum = asyncio.create_task(self._vacuum_outbox(), name=f"{self.service}-outbox-vacuum")

    async def _vacuum_outbox(self) -> None:
        """On a connection of its own, beside the publishing: a vacuum of a few pages takes a millisecond or two
        and blocks no writer. One that fails is logged; autovacuum still comes."""
        try:
            await self.pool.execute("VACUUM outbox")
        except Exception as exc:  # noqa: BLE001 - an optimisation missed, not an event lost
            log.warning("the outbox vacuum failed: %s", exc)

    async def _publish(self, rows: Sequence[OutboxRow]) -> None:
        """Send rows in order and wait until Kafka acknowledged every one (idempotent producer, acks=all)."""
        futures = []
        self._publishing = [r.id for r in rows]
        try:
            for row in rows:
                futures.append(await self.producer.send(row.topic, row.value, key=row.key,
                                                        headers=[(k, v.encode()) for k, v in row.headers]))
            await asyncio.gather(*futures)
        finally:
            self._publishing = []
        for row in rows:
            metrics.PRODUCED.labels(self.service, row.topic).inc()
        self.published += len(rows)

    async def drain(self) -> None:
        """At shutdown, with the relay task stopped: delete what it published, publish what is left - unless
        another instance's relay holds the lock (it publishes them; two publishers could interleave)."""
        if self._to_delete:
            await self.pool.execute(_DELETE, self._to_delete)
            self._to_delete = []
        async with self.pool.acquire() as conn:
            keeps_session_state(conn)
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _lock_key(self.schema)):
                return
            try:
                while await self.publish_batch():
                    pass
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _lock_key(self.schema))

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
