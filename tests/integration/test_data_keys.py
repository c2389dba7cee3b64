"""intake's data keys on the real PostgreSQL: one per contract, kept once made, made again only after an
erasure, and what a batch needs read or made in one statement."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import pytest

from services.intake.store import IntakeStore
from shared.db import migrate
from shared.messaging.deferral import BatchConnection
from shared.messaging.outbox import Outbox
from tests.integration.own_database import own_database

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
AT = datetime(2026, 12, 4, tzinfo=timezone.utc)


@pytest.fixture
async def database(infra):
    async with own_database(infra, "keys") as url:
        await migrate(url, "intake", REPO / "services" / "intake")
        yield url


@pytest.fixture
async def conn(database):
    conn = await connect(database)
    try:
        yield conn
    finally:
        await conn.close()


async def connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, server_settings={"search_path": "intake"})


def store_on(conn: asyncpg.Connection) -> IntakeStore:
    return IntakeStore(BatchConnection(conn), Outbox(conn, "intake"))


class Counting:
    """The connection, counting the statements the store sends through it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.sent: list[str] = []

    def __getattr__(self, name: str):
        send = getattr(self.conn, name)
        if name not in ("fetch", "fetchrow", "fetchval", "execute", "executemany"):
            return send

        async def counted(sql, *args, **kwargs):
            self.sent.append(sql)
            return await send(sql, *args, **kwargs)
        return counted


async def statements_run(conn: asyncpg.Connection, contract_ids: list[str]):
    """The keys `_data_keys` gives, and the statements it sent for them."""
    counting = Counting(conn)
    keys = await IntakeStore(BatchConnection(counting), Outbox(counting, "intake"))._data_keys(contract_ids)
    return keys, counting.sent


async def test_a_batch_gets_its_keys_in_one_statement_and_keeps_them(conn):
    first, sent = await statements_run(conn, ["c-1", "c-2"])
    assert len(sent) == 1
    assert set(first) == {"c-1", "c-2"} and first["c-1"].key != first["c-2"].key
    assert all(len(k.key) == 32 for k in first.values())

    again, sent = await statements_run(conn, ["c-1", "c-2", "c-3"])
    assert len(sent) == 1
    assert again["c-1"] == first["c-1"] and again["c-2"] == first["c-2"]
    assert again["c-3"].key not in {first["c-1"].key, first["c-2"].key}
    assert await conn.fetchval("SELECT count(*) FROM subject_keys") == 3


async def test_an_erased_contract_gets_a_new_key_for_new_data_only(conn):
    before = (await store_on(conn)._data_keys(["c-9"]))["c-9"]
    store = store_on(conn)
    store.erase("c-9", AT)
    await store.conn.flush()
    assert await conn.fetchval("SELECT key IS NULL AND erased_at IS NOT NULL FROM subject_keys") is True

    after = await store_on(conn).data_key("c-9")
    assert after.key != before.key and after.key_id != before.key_id
    assert await store_on(conn).data_key("c-9") == after


async def test_a_key_another_transaction_commits_meanwhile_is_read_not_replaced(database, conn):
    """Our statement waits on the other transaction's uncommitted key; once that commits, the statement's
    snapshot (older) does not see it and its conflict neither updates nor returns it: the store reads it."""
    other = await connect(database)
    try:
        tx = other.transaction()
        await tx.start()
        theirs = (await store_on(other)._data_keys(["c-5"]))["c-5"]
        ours_task = asyncio.create_task(store_on(conn)._data_keys(["c-5"]))
        for _ in range(500):
            if await other.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
                                    " AND wait_event_type = 'Lock'", conn.get_server_pid()):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("our statement never waited for the other transaction's key")
        await tx.commit()
        ours = (await asyncio.wait_for(ours_task, 10))["c-5"]
    finally:
        await other.close()
    assert ours == theirs
    assert await conn.fetchval("SELECT count(*) FROM subject_keys") == 1
