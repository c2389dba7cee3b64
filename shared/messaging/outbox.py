"""Transactional outbox: events are rows written in the caller's transaction; a relay publishes them.

A state change and the event announcing it commit together or not at all. `Outbox` collects one
transaction's rows and writes them with one statement just before the commit; `Emitter` is the one way
to put an event in it. The relay (`shared.messaging.relay`) publishes committed rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from shared.events import Envelope, EventData, new_envelope
from shared.messaging.doorbell import Doorbell

Header = tuple[str, str]


def channel(schema: str) -> str:
    """The NOTIFY channel that wakes a schema's relay."""
    return f"outbox_{schema}"


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    key: bytes | None
    value: bytes
    headers: Sequence[Header]


class Relay(Protocol):
    """What a transaction tells the relay of its process (shared.messaging.relay.OutboxRelay)."""

    active: bool
    epoch: int  # counts the relay's activations: what it knew in an earlier one it may have dropped since

    def known(self) -> list[int]: ...
    def expect(self, ids: Sequence[int]) -> None: ...
    def forget(self, ids: Sequence[int]) -> None: ...
    def hand_over(self, rows: Sequence[OutboxRow], *, in_order_at: int | None = None) -> None: ...


# Many rows in the order they were added (ids follow that order), then the NOTIFYs: one round trip that
# returns the new ids (for the relay in this process, see OutboxRelay.hand_over).
_INSERT_MANY = """
WITH added AS (
    INSERT INTO outbox (topic, key, value, headers)
    SELECT t, k, v, h::jsonb FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::text[]) WITH ORDINALITY AS u(t, k, v, h, n)
    ORDER BY n
    RETURNING id)
SELECT (SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM added) AS ids,
       (SELECT count(pg_notify(c, $6)) FROM unnest($5::text[]) AS c) AS notified"""
# With this process's relay active, the same round trip tells whether a committed row is in the table that
# the relay does not know ($7): another instance's commit, or this process's while its relay was not active.
# The statement's snapshot is the transaction's last, and its own rows are not in it: a row committed before
# it is seen here. One committed after it, before this transaction's commit, had no lock or record in common
# with it (either would have made one wait for the other's commit before this statement): no order between
# the two to keep. So the relay publishes these rows as soon as they are handed over, without a check of its
# own, unless this says otherwise.
_INSERT_CHECKED = _INSERT_MANY + """,
       EXISTS (SELECT FROM outbox o WHERE NOT EXISTS (SELECT FROM unnest($7::bigint[]) AS k(id) WHERE k.id = o.id))
           AS older"""


class Outbox:
    """The outbox rows (and NOTIFY channels) of one transaction, written together just before it commits,
    so "state + outbox in one transaction" holds with one round trip for the whole transaction. A record
    whose savepoint is rolled back is cut out with `mark()` / `rollback_to()`."""

    def __init__(self, conn: Any, schema: str, relay: Relay | None = None, doorbell: Doorbell | None = None) -> None:
        self.conn = conn
        self.schema = schema
        self.relay = relay
        self.doorbell = doorbell
        self.rung: set[str] = set()  # NOTIFYed in this transaction, for the doorbell once it commits
        self.rows: list[tuple[str, bytes | None, bytes, Sequence[Header]]] = []
        self.channels: set[str] = set()
        self.written: list[OutboxRow] = []  # flushed in this transaction, for the relay once it commits
        # The relay's epoch in which every flush of this transaction found no older row it does not know;
        # None once one found one (or flushed in another epoch).
        self.in_order_at: int | None = None
        self._flushed = False

    def add(self, topic: str, key: bytes | None, value: bytes, headers: Sequence[Header] = ()) -> None:
        self.rows.append((topic, key, value, headers))

    def notify(self, channel_: str) -> None:
        """NOTIFY `channel_` when the transaction commits (once, however often it is asked)."""
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
        args = ([r[0] for r in self.rows], [r[1] for r in self.rows], [r[2] for r in self.rows],
                [orjson.dumps([list(h) for h in r[3]]).decode() for r in self.rows], sorted(self.channels),
                self.doorbell.token if self.doorbell is not None else "")
        if relay is not None and self.rows:
            epoch = relay.epoch  # with what it knows, before the statement's snapshot is taken
            ids, _, older = await self.conn.fetchrow(_INSERT_CHECKED, *args, relay.known())
            relay.expect(ids)  # not committed yet: the relay must not read them back meanwhile
            self.written += [OutboxRow(i, *r) for i, r in zip(ids, self.rows)]
            in_order = not older and (not self._flushed or self.in_order_at == epoch)
            self.in_order_at, self._flushed = (epoch if in_order else None), True
        else:
            await self.conn.fetchval(_INSERT_MANY, *args)
        self.rung |= self.channels
        self.rows.clear()
        self.channels.clear()

    def committed(self) -> None:
        """The transaction committed: the relay in this process publishes the rows now, and this process's
        listeners of what it NOTIFYed hear it now."""
        written, self.written = self.written, []
        rung, self.rung = self.rung, set()
        if written and self.relay is not None:
            self.relay.hand_over(written, in_order_at=self.in_order_at)
        if rung and self.doorbell is not None:
            self.doorbell.ring(rung)

    def abandoned(self) -> None:
        """The transaction rolled back: its rows never existed, its NOTIFYs never went out."""
        written, self.written = self.written, []
        self.rung = set()
        if written and self.relay is not None:
            self.relay.forget([row.id for row in written])


@asynccontextmanager
async def outbox_transaction(conn: Any, schema: str, relay: Relay | None = None, doorbell: Doorbell | None = None
                             ) -> AsyncIterator[Outbox]:
    """A transaction on `conn` with its outbox: the rows are written just before the commit and handed to
    `relay` once it committed (forgotten if it rolled back), its NOTIFYs rung on `doorbell` too."""
    outbox = Outbox(conn, schema, relay, doorbell)
    try:
        async with conn.transaction():
            yield outbox
            await outbox.flush()
    except BaseException:
        outbox.abandoned()
        raise
    outbox.committed()


class Emitter:
    """The one way to emit an event: its envelope (producer, correlation, causation) as an outbox row of the
    current transaction, keyed by `key` (the contract id, so one contract's events stay in order)."""

    __slots__ = ("outbox", "producer", "correlation_id", "causation_id")

    def __init__(self, outbox: Outbox, producer: str, correlation_id: str, causation_id: str | None = None) -> None:
        self.outbox = outbox
        self.producer = producer
        self.correlation_id = correlation_id
        self.causation_id = causation_id

    def __call__(self, data: EventData, *, key: str) -> Envelope:
        envelope = new_envelope(data, producer=self.producer, correlation_id=self.correlation_id,
                                causation_id=self.causation_id)
        self.outbox.add(data.topic, key.encode(), envelope.to_bytes(),
                        [("event_type", data.event_type), ("schema_version", str(data.schema_version))])
        return envelope
