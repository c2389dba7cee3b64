"""`cancelflow rebuild SERVICE` (SPEC section 8): a service's state built from the topics into an empty
schema, then compared with the service's schema, or put in its place.

Nothing is published and nothing is sent: the service's projection (`services/<name>/rebuild.py`) writes
state only, no relay runs on the new schema and its outbox stays empty. A record whose event id was read
before (a relay's republish, a producer's retry) is skipped, as the service's inbox skipped it, within the
inbox window. The new schema's inbox gets, within the window, the ids of the events applied and of the events
the service's own recorded events were caused by (their `causation_id`), so a record the service re-reads
after the switch is skipped as it would have been.
"""

from __future__ import annotations

import importlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg

from shared import db_roles
from shared.db import create_pool, migrate
from shared.events import PoisonMessage, decode
from shared.kafka_connection import KafkaConnection
from shared.messaging.deferral import BatchConnection
from shared.messaging.projection import Projection

from . import kafka_clients
from .seen_window import SeenWindow

REPO = Path(__file__).resolve().parents[1]
REBUILDABLE = ("intake", "eligibility", "billing", "notifier")
MESSAGING_TABLES = ("schema_migrations", "processed_events", "outbox")
CHUNK = 2000  # records per transaction while projecting


class RebuildError(Exception):
    pass


@dataclass
class Rebuilt:
    service: str
    schema: str
    records: dict[str, int] = field(default_factory=dict)  # per topic
    skipped: int = 0  # records that are not events (the service dead-lettered them: no state)
    duplicates: int = 0  # copies of an event read before (its inbox skipped them)
    inbox: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # per table


def projection(service: str) -> Projection:
    if service not in REBUILDABLE:
        raise RebuildError(f"service: {service!r} cannot be rebuilt from the log (rebuildable: "
                           f"{', '.join(REBUILDABLE)})")
    return importlib.import_module(f"services.{service}.rebuild").PROJECTION


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def build(service: str, *, database_url: str, kafka: KafkaConnection, schema: str, now: datetime,
                inbox_window: timedelta = timedelta(days=7)) -> Rebuilt:
    """Project the topics into `schema`, made empty first; on any failure the schema is dropped again."""
    proj = projection(service)
    if schema == service:
        raise RebuildError(f"schema: rebuilding into {service!r} itself; give a new schema")
    await drop(database_url, schema)
    await migrate(database_url, schema, REPO / "services" / service, service=service)
    result = Rebuilt(service, schema)
    pool = await create_pool(database_url, schema, max_size=1)
    try:
        inbox_ids: set[str] = set()  # within the window
        seen = SeenWindow(inbox_window)
        since = now - inbox_window
        async with pool.acquire() as raw:
            for table in proj.carried:  # from the service's own schema, when it has one
                if await raw.fetchval("SELECT to_regclass($1)", f"{_q(service)}.{_q(table)}") is None:
                    continue
                await raw.execute(f"INSERT INTO {_q(schema)}.{_q(table)} SELECT * FROM {_q(service)}.{_q(table)}")
            conn = BatchConnection(raw)  # the stores' deferred writes, flushed once per fetch
            for topic in proj.topics:
                result.records[topic] = 0
                async for records in kafka_clients.stream_topic(kafka, topic):
                    async with raw.transaction():
                        for record in records:
                            await apply_record(record, proj, conn, seen=seen, result=result, since=since,
                                               inbox_ids=inbox_ids)
                        await conn.flush()
                    result.records[topic] += len(records)
            result.inbox = await _fill_inbox(raw, inbox_ids, now)
            for table in await _tables(raw, schema):
                result.rows[table] = await raw.fetchval(f"SELECT count(*) FROM {_q(schema)}.{_q(table)}")
            # Built by the admin, run by the service: its own role owns it, as it owns the schema it replaces.
            await db_roles.hand_over(raw, schema, service)
    except BaseException:
        await pool.close()
        await drop(database_url, schema)
        raise
    await pool.close()
    return result


def published_at(record: Any) -> datetime:
    """When the record was written to the log (its Kafka timestamp)."""
    return datetime.fromtimestamp(record.timestamp / 1000, timezone.utc)


async def apply_record(record: Any, proj: Projection, conn: Any, *, seen: SeenWindow, result: Rebuilt,
                       since: datetime, inbox_ids: set[str]) -> None:
    """One record into the schema being built, unless it is not an event or a copy of one read before.
    A copy is one within the window of *publication* time: a relay's republish carries the original's
    `occurred_at`, so only the log's timestamps tell how long after the original it came, which is what
    the service's inbox measured (it held the original's id from its processing for the window)."""
    try:
        envelope, data = decode(record.value)
    except PoisonMessage:
        result.skipped += 1
        return
    if not seen.first(envelope.event_id, published_at(record)):
        result.duplicates += 1
        return
    await proj(conn, envelope, data)
    if envelope.occurred_at >= since:
        inbox_ids.add(str(envelope.event_id))
        if envelope.producer == proj.service and envelope.causation_id:
            inbox_ids.add(envelope.causation_id)


async def _fill_inbox(conn, inbox_ids: set[str], now: datetime) -> int:
    ids = []
    for value in inbox_ids:
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            continue
    await conn.execute(
        "INSERT INTO processed_events (event_id, event_type, topic, partition, \"offset\", processed_at)"
        " SELECT id, 'rebuilt', '', -1, -1, $2 FROM unnest($1::uuid[]) AS id ON CONFLICT DO NOTHING", ids, now)
    return len(ids)


async def _tables(conn, schema: str) -> list[str]:
    rows = await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = $1"
                            " AND table_type = 'BASE TABLE' ORDER BY table_name", schema)
    return [r["table_name"] for r in rows if r["table_name"] not in MESSAGING_TABLES]


async def compare(database_url: str, service: str, a: str, b: str) -> dict[str, str]:
    """The state tables of schemas `a` and `b` row for row (bookkeeping columns left out): {table: what
    differs}; empty when they are equal."""
    bookkeeping = dict(projection(service).bookkeeping)
    conn = await asyncpg.connect(database_url)
    try:
        tables_a, tables_b = await _tables(conn, a), await _tables(conn, b)
        differences = {t: f"only in {a}" for t in set(tables_a) - set(tables_b)}
        differences |= {t: f"only in {b}" for t in set(tables_b) - set(tables_a)}
        for table in sorted(set(tables_a) & set(tables_b)):
            columns = [r["column_name"] for r in await conn.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2"
                " ORDER BY ordinal_position", a, table) if r["column_name"] not in bookkeeping.get(table, ())]
            cols = ", ".join(_q(c) for c in columns)
            only_a = await conn.fetchval(f"SELECT count(*) FROM ({_only_in(cols, table, a, b)}) d")
            only_b = await conn.fetchval(f"SELECT count(*) FROM ({_only_in(cols, table, b, a)}) d")
            if only_a or only_b:
                # What an operator (or a failing test) needs to see: the first few rows of each side.
                first = [[dict(r) for r in await conn.fetch(f"{_only_in(cols, table, x, y)} ORDER BY 1 LIMIT 3")]
                         for x, y in ((a, b), (b, a))]
                differences[table] = (f"{only_a} row(s) only in {a}, {only_b} only in {b}; first of each: "
                                      f"{first[0]} / {first[1]}")
        return differences
    finally:
        await conn.close()


def _only_in(cols: str, table: str, a: str, b: str) -> str:
    """The rows of `table` in schema `a` and not in `b` (as many times as they are more often in `a`)."""
    return f"SELECT {cols} FROM {_q(a)}.{_q(table)} EXCEPT ALL SELECT {cols} FROM {_q(b)}.{_q(table)}"


async def switch(database_url: str, service: str, rebuilt: str, *, suffix: str) -> str | None:
    """Put schema `rebuilt` in the service's place, in one transaction; the old schema is kept under a new
    name (returned; None when the service had none) for the operator to drop."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            had = await conn.fetchval("SELECT true FROM information_schema.schemata WHERE schema_name = $1", service)
            replaced = f"{service}_replaced_{suffix}" if had else None
            if replaced:
                await conn.execute(f"ALTER SCHEMA {_q(service)} RENAME TO {_q(replaced)}")
            await conn.execute(f"ALTER SCHEMA {_q(rebuilt)} RENAME TO {_q(service)}")
        return replaced
    finally:
        await conn.close()


async def group_members(kafka: KafkaConnection, group: str) -> int:
    """How many consumers the service's group has now (a switch needs the service stopped)."""
    client = kafka_clients.admin(kafka)
    await client.start()
    try:
        [described] = await client.describe_consumer_groups([group])
        return len(described.groups[0][5]) if described.groups else 0
    finally:
        await client.close()


async def drop(database_url: str, schema: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {_q(schema)} CASCADE")
    finally:
        await conn.close()
