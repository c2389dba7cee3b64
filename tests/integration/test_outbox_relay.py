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
from shared.messaging.outbox import Outbox
from shared.messaging.relay import OutboxRelay
from services.intake.app import create_app
from services.intake.settings import IntakeSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def relay_setup(infra):
    name = f"relay_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(infra.admin_url())
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = infra.admin_url(name)
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
    admin = await asyncpg.connect(infra.admin_url())
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


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
