"""The outbox relay on real PostgreSQL and Kafka: rows handed over by committed transactions, rows only in
the table (another writer, a previous run) and rolled-back rows; each published once, then deleted."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from cancelflow import kafka_clients
from cancelflow.infra.kafka import create_topics
from shared.db import create_pool, migrate
from shared.messaging.doorbell import Doorbell
from shared.messaging.outbox import _INSERT_CHECKED, Outbox
from shared.messaging.relay import _DELETE, _OLDER, OutboxRelay, _lock_key
from services.intake.app import create_app
from services.intake.settings import IntakeSettings

from tests.integration.own_database import own_database, wal_fsyncs

pytestmark = pytest.mark.integration


@pytest.fixture
async def relay_setup(infra):
    async with own_database(infra, "relay") as url:
        rt = create_app(IntakeSettings(database_url=url, kafka_bootstrap_servers=infra.bootstrap,
                                       api_keys="relay-tests")).runtime
        await migrate(url, rt.schema, rt.service_dir)
        pool = await create_pool(url, rt.schema)
        topic = f"relay-test-{uuid.uuid4().hex[:8]}"
        await create_topics(infra.bootstrap, (topic,), 1, **kafka_clients.as_connection(infra.bootstrap).client_options())
        producer = kafka_clients.producer(infra.bootstrap)  # the security settings too (the SASL compose stack)
        await producer.start()
        relay = OutboxRelay(pool=pool, producer=producer, schema=rt.schema, service="test", poll_ms=200)
        task = asyncio.create_task(relay.run())
        for _ in range(100):
            if relay.active:
                break
            await asyncio.sleep(0.05)
        yield relay, pool, topic, rt.schema, infra.bootstrap
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()
        await pool.close()


async def _published(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = kafka_clients.consumer(bootstrap, topic, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while len(values) < expected and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                values += [r.value for r in records]
        for records in (await consumer.getmany(timeout_ms=500)).values():  # and nothing more comes
            values += [r.value for r in records]
    finally:
        await consumer.stop()
    return values


async def test_handed_over_table_only_and_rolled_back_rows(relay_setup):
    relay, pool, topic, schema, bootstrap = relay_setup
    assert relay.active

    async def write(values: list[bytes], *, hand_over: bool, fail: bool = False) -> None:
        async with pool.acquire() as conn:
            outbox = Outbox(conn, schema, relay if hand_over else None)
            try:
                async with conn.transaction():
                    for value in values:
                        outbox.add(topic, b"k", value, [("event_type", "test")])
                    await outbox.flush()
                    if fail:
                        await outbox.flush()  # written, then the transaction fails
                        raise RuntimeError("rolled back")
            except RuntimeError:
                outbox.abandoned()
                return
            outbox.committed()

    await write([b"h1", b"h2"], hand_over=True)
    await write([b"t1"], hand_over=False)         # read back from the table (its NOTIFY wakes the relay)
    await write([b"gone"], hand_over=True, fail=True)
    await write([b"h3"], hand_over=True)
    values = await _published(bootstrap, topic, 4)
    assert sorted(values) == [b"h1", b"h2", b"h3", b"t1"], "each committed row once, the rolled-back one never"
    assert values.index(b"h1") < values.index(b"h2") < values.index(b"h3"), "commit order"
    for _ in range(50):
        if await pool.fetchval("SELECT count(*) FROM outbox") == 0:
            break
        await asyncio.sleep(0.05)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0, "published rows are deleted"
    assert not relay._in_flight, "the rolled-back row is forgotten"
    assert relay.published == 4


class _GatedProducer:
    """The real producer, whose sends wait while `gate` is closed (the relay busy on a slow broker)."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def send(self, *args, **kwargs):
        self.waiting.set()
        await self.gate.wait()
        return await self.producer.send(*args, **kwargs)


async def _write(pool: asyncpg.Pool, relay: OutboxRelay | None, schema: str, topic: str, value: bytes) -> None:
    """One row for contract-1 in a transaction of its own: handed over to `relay`, or (None) only in the table."""
    async with pool.acquire() as conn:
        outbox = Outbox(conn, schema, relay)
        async with conn.transaction():
            outbox.add(topic, b"contract-1", value, [("event_type", "test")])
            await outbox.flush()
        outbox.committed()


async def test_a_row_committed_elsewhere_goes_before_later_handed_over_rows_of_its_key(relay_setup):
    """Found by the chaos run: the partition's earlier record was committed by another instance (a row only
    in the table), its next one by the relay's own process after a rebalance (handed over); the handed-over
    row was published first, so the contract's two requests were on the topic in the wrong order."""
    relay, pool, topic, schema, bootstrap = relay_setup
    gated = _GatedProducer(relay.producer)
    relay.producer = gated

    await _write(pool, relay, schema, topic, b"first-here")
    await asyncio.wait_for(gated.waiting.wait(), 10)  # the relay is publishing it, held at the gate
    await _write(pool, None, schema, topic, b"second-elsewhere")  # another instance's commit: in the table, NOTIFY
    await _write(pool, relay, schema, topic, b"third-here")
    await asyncio.sleep(0.3)  # the NOTIFY is in; without it the order must hold just the same
    gated.gate.set()
    values = await _published(bootstrap, topic, 3)
    assert values == [b"first-here", b"second-elsewhere", b"third-here"], "per key, commit order"
    assert relay.checked >= 1, "the third's INSERT saw the second: the relay checked before publishing it"


async def test_rows_whose_insert_found_nothing_older_go_without_a_check_of_the_relay(relay_setup):
    """The common case, one instance: each transaction's own INSERT vouches for its rows, so the relay
    publishes them as they are handed over, with no round trip of its own between the commit and Kafka."""
    relay, pool, topic, schema, bootstrap = relay_setup
    for value in (b"a", b"b", b"c"):
        await _write(pool, relay, schema, topic, value)
    assert await _published(bootstrap, topic, 3) == [b"a", b"b", b"c"]
    assert relay.checked == 0


async def test_a_transaction_checked_before_its_relay_started_again_is_checked_by_the_relay(relay_setup):
    """What the relay knew when the INSERT looked holds for that activation only: after the relay lost its
    lock (its connection) and took it again, rows vouched for before are checked by the relay itself."""
    relay, pool, topic, schema, bootstrap = relay_setup
    epoch = relay.epoch
    async with pool.acquire() as conn:
        outbox = Outbox(conn, schema, relay)
        async with conn.transaction():
            outbox.add(topic, b"contract-1", b"vouched-before", [("event_type", "test")])
            await outbox.flush()
            assert outbox.in_order_at == epoch
            await pool.execute("SELECT pg_terminate_backend(pid) FROM pg_locks"
                               " WHERE locktype = 'advisory' AND objid = $1::bigint", _lock_key(schema) & 0xFFFFFFFF)
            for _ in range(200):
                if relay.active and relay.epoch > epoch:
                    break
                await asyncio.sleep(0.05)
            assert relay.epoch > epoch, "the relay took its lock again"
        outbox.committed()
    assert await _published(bootstrap, topic, 1) == [b"vouched-before"]
    assert relay.checked == 1


async def test_a_notify_is_heard_here_at_commit_and_elsewhere_with_the_token(relay_setup):
    """The process's own listener is rung as the transaction commits; a LISTEN connection (another process)
    gets the NOTIFY with the token, so this process can tell its own from others'."""
    _, pool, _, schema, _ = relay_setup
    doorbell, rung = Doorbell(), []
    doorbell.listen("doorbell_test", lambda: rung.append(1))
    listener, payloads = await pool.acquire(), asyncio.Queue()

    def on_notify(_conn, _pid, _channel, payload: str) -> None:
        payloads.put_nowait(payload)

    await listener.add_listener("doorbell_test", on_notify)
    try:
        async with pool.acquire() as conn:
            outbox = Outbox(conn, schema, None, doorbell)
            async with conn.transaction():
                outbox.notify("doorbell_test")
                await outbox.flush()
            assert rung == []
            outbox.committed()
        assert rung == [1]
        assert await asyncio.wait_for(payloads.get(), 10) == doorbell.token
    finally:
        await listener.remove_listener("doorbell_test", on_notify)
        await pool.release(listener)


@pytest.fixture
async def outbox_url(infra):
    """intake's schema on a database of its own, no relay running: the relay's statements by hand."""
    async with own_database(infra, "relay_sql") as url:
        await migrate(url, "intake", create_app(IntakeSettings(database_url=url, api_keys="k")).runtime.service_dir)
        yield url


@pytest.fixture
async def outbox_only(outbox_url):
    conn = await asyncpg.connect(outbox_url, server_settings={"search_path": "intake"})
    try:
        yield conn
    finally:
        await conn.close()


async def test_the_insert_finds_a_committed_row_the_relay_does_not_know(outbox_url, outbox_only):
    conn = outbox_only
    insert = "INSERT INTO outbox (topic, key, value, headers) VALUES ('t', 'k', 'v', '[]') RETURNING id"
    known = [await conn.fetchval(insert) for _ in range(3)]

    async def older(known: list[int]) -> bool:
        async with conn.transaction():
            ids, _, found = await conn.fetchrow(_INSERT_CHECKED, ["t"], [b"k"], [b"v"], ["[]"], [], "", known)
            assert len(ids) == 1 and ids[0] not in known
        return found

    assert await older(known) is False, "every committed row known (its own row is not among them)"
    assert await older(known) is True, "the row the previous call committed is not known"
    known = [i for (i,) in await conn.fetch("SELECT id FROM outbox")]
    other = await asyncpg.connect(outbox_url, server_settings={"search_path": "intake"})
    try:
        async with other.transaction():
            await other.fetchval(insert)  # another transaction's row, not committed yet: not older
            assert await older(known) is False
    finally:
        await other.close()
    assert await older(known) is True, "committed now (and the previous call's row)"




async def test_the_in_order_check_deletes_what_was_published_and_neither_waits_for_the_disk(outbox_only):
    conn = outbox_only
    ids = [await conn.fetchval("INSERT INTO outbox (topic, key, value, headers) VALUES ('t', 'k', 'v', '[]')"
                               " RETURNING id") for _ in range(6)]
    before = await wal_fsyncs(conn)
    # 0 and 1 published (deleted by the check), 2-4 known, 5 the handed-over top: nothing older unknown.
    assert await conn.fetchval(_OLDER, ids[5], ids[:5], ids[:2]) is False
    assert await conn.fetchval("SELECT array_agg(id ORDER BY id) FROM outbox") == ids[2:]
    # 2 not known (another instance's commit): older.
    assert await conn.fetchval(_OLDER, ids[5], ids[3:5], []) is True
    await conn.execute(_DELETE, ids[2:])
    assert await conn.fetchval("SELECT count(*) FROM outbox") == 0
    assert await wal_fsyncs(conn) == before, "the relay's deletes do not wait for the disk"
    assert await conn.fetchval("SHOW synchronous_commit") == "on", "for the relay's statements alone"
    await conn.execute("INSERT INTO outbox (topic, key, value, headers) VALUES ('t', 'k', 'v', '[]')")
    assert await wal_fsyncs(conn) > before, "a plain commit here does wait (the count is not blind)"


async def test_the_relay_vacuums_the_outbox_after_deleting_enough_rows(relay_setup):
    """The deleted rows' index entries are what the in-order check and the scan step over; autovacuum comes
    once a minute at best, so the relay vacuums the table itself."""
    relay, pool, topic, schema, bootstrap = relay_setup
    relay.VACUUM_EVERY = 30

    async def vacuums() -> int:
        return await pool.fetchval("SELECT vacuum_count FROM pg_stat_user_tables WHERE schemaname = $1"
                                   " AND relname = 'outbox'", schema)

    assert await vacuums() == 0
    for batch in range(8):
        async with pool.acquire() as conn:
            outbox = Outbox(conn, schema, relay)
            async with conn.transaction():
                for i in range(5):
                    outbox.add(topic, b"k", f"{batch}-{i}".encode(), [("event_type", "test")])
                await outbox.flush()
            outbox.committed()
    assert len(await _published(bootstrap, topic, 40)) == 40
    for _ in range(100):
        if await vacuums() >= 1:
            break
        await asyncio.sleep(0.05)
    assert await vacuums() >= 1
