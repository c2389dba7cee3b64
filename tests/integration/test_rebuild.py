"""`cancelflow rebuild` on the real stack (SPEC section 8): after the demo's traffic (acceptances,
rejections, a payment, a withdrawal, reminders, a completion with the clock moved) and copies of its recent
records published again (as a relay republishes after a crash), every service's state built from the topics
equals its tables row for row; building publishes nothing; a service switched to its rebuilt schema keeps
working. (After the chaos run's traffic: tests/chaos/test_chaos.py.)"""

from __future__ import annotations

import asyncio
import io
import os
import sys
from datetime import date, datetime, timezone

import asyncpg
import pytest
from rich.console import Console

from cancelflow import demo, kafka_clients, rebuild
from cancelflow.ops import top
from shared import topics
from shared.events import decode

pytestmark = pytest.mark.integration


async def _ends(infra) -> dict:
    client = kafka_clients.consumer(infra.bootstrap)
    await client.start()
    try:
        from aiokafka.structs import TopicPartition

        parts = await kafka_clients.topic_partitions(infra.bootstrap, topics.all_with_dlq())
        return await client.end_offsets([TopicPartition(t, p) for t, ps in parts.items() for p in ps])
    finally:
        await client.stop()


SERVICES = ("intake", "eligibility", "billing", "notifier")


async def _quiet(infra, timeout: float = 180) -> None:
    """Until every service has consumed every topic it reads and every outbox is empty: the services have
    finished the demo's events (at a high load average this takes far longer than a few seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    conn = await asyncpg.connect(infra.database_url)
    try:
        while True:
            view = await top.top_once(kafka_clients.connection(infra.bootstrap), interval=0.05)
            lag = {(r.service, r.topic): r.lag for r in view.lags if r.lag}
            outbox = {s: n for s in SERVICES if (n := await conn.fetchval(f"SELECT count(*) FROM {s}.outbox"))}
            if not lag and not outbox:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the pipeline is not quiet after {timeout:g} s: lag {lag}, outbox {outbox}")
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _built_equal(infra, service: str) -> dict:
    """Build into a scratch schema and compare, once the pipeline is quiet; a scheduled task (a reminder,
    a completion) may still be writing, so a difference is looked at again a few times before it counts."""
    differences: dict = {}
    for attempt in range(6):
        await _quiet(infra)
        schema = f"{service}_rebuild_test"
        before = await _ends(infra)
        built = await rebuild.build(service, database_url=infra.database_url, kafka=kafka_clients.connection(
            infra.bootstrap), schema=schema, now=datetime.now(timezone.utc))
        assert sum(built.records.values()) > 0 and built.rows
        try:
            differences = await rebuild.compare(infra.database_url, service, service, schema)
            if not differences:
                after = await _ends(infra)
                return {"built": built, "published": {tp: after[tp] - n for tp, n in before.items() if after[tp] != n}}
        finally:
            await rebuild.drop(infra.database_url, schema)
        await asyncio.sleep(2)
    raise AssertionError(f"{service} rebuilt differs: {differences}")


REPUBLISHED = (topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS)


async def _republish_recent(infra, since: datetime) -> int:
    """Every record of the pipeline's topics that occurred since `since`, published again byte for byte
    (key, value, headers): the copies a relay sends when it crashed between Kafka's ack and its delete."""
    copies = []
    for topic in REPUBLISHED:
        async for records in kafka_clients.stream_topic(kafka_clients.connection(infra.bootstrap), topic):
            for r in records:
                envelope, _ = decode(r.value)
                if envelope.occurred_at >= since:
                    copies.append((topic, r))
    producer = kafka_clients.producer(infra.bootstrap)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, r.value, key=r.key, headers=list(r.headers))
                               for topic, r in copies])
    finally:
        await producer.stop()
    return len(copies)


@pytest.fixture(scope="module")
async def after_demo(infra):
    if infra.stack is None or infra.clock is None:
        pytest.skip("the demo needs the test's own stack and clock")
    started = infra.clock.now()
    await demo._demo(infra.stack, infra.intake_url, infra.api_key, Console(file=io.StringIO()))
    assert await _republish_recent(infra, started) > 20
    return infra


STATUS_TABLE = {"intake": "requests", "eligibility": "cancellations", "billing": "settlements",
                "notifier": "requests"}
STATUSES = {"intake": {"rejected", "withdrawn", "completed"}, "eligibility": {"rejected", "withdrawn", "completed"},
            "billing": {"issued", "voided"}, "notifier": {"rejected", "withdrawn", "completed"}}


@pytest.mark.parametrize("service", ["intake", "eligibility", "billing", "notifier"])
async def test_the_rebuilt_tables_equal_the_originals_and_nothing_is_published(after_demo, service):
    infra = after_demo
    result = await _built_equal(infra, service)
    built = result["built"]
    conn = await asyncpg.connect(infra.database_url)
    try:
        for table, rows in built.rows.items():
            assert rows == await conn.fetchval(f'SELECT count(*) FROM "{service}"."{table}"'), table
        statuses = {r[0] for r in await conn.fetch(f'SELECT status FROM "{service}".{STATUS_TABLE[service]}')}
        if service == "notifier":
            statuses |= {r[0] for r in await conn.fetch("SELECT status FROM notifier.notifications")}
    finally:
        await conn.close()
    # The demo's cases are in the comparison: rejected, withdrawn, completed (issued and voided: billing;
    # the notifier's mails sent, cancelled by the withdrawal and the completion).
    assert statuses >= STATUSES[service] | ({"sent", "cancelled"} if service == "notifier" else set())
    assert built.inbox > 0
    # The republished copies were read and skipped, as the service's inbox skipped them.
    assert built.duplicates > 0
    # What a rebuild that emitted would have re-published: nothing was, during the build.
    assert not [tp for tp in result["published"] if tp.topic in (topics.DECISIONS, topics.SETTLEMENTS)]


async def test_billing_switched_to_its_rebuilt_schema_keeps_working(after_demo, client):
    infra = after_demo
    stack = infra.stack
    await _built_equal(infra, "billing")  # quiet: billing's tables are the log's
    schema = "billing_rebuild_switch"
    stack.stop_process("billing", stack.procs["billing"].pid)
    try:
        await rebuild.build("billing", database_url=infra.database_url,
                            kafka=kafka_clients.connection(infra.bootstrap), schema=schema,
                            now=datetime.now(timezone.utc))
        replaced = await rebuild.switch(infra.database_url, "billing", schema, suffix="test")
        assert replaced == "billing_replaced_test"
        assert await rebuild.compare(infra.database_url, "billing", "billing", replaced) == {}
        await _only_billing_may_use_its_schema(infra)
    finally:
        stack.start_service("billing")
        await asyncio.to_thread(stack.wait_healthy, ["billing"])
    try:
        # The rebuilt billing settles a new cancellation; the demo's settlements are not issued again.
        contract = await client.sign_contract(start_date=date(2023, 1, 31))
        rid = (await client.submit(client.form(contract))).json()["request_id"]
        view = await client.wait_status(rid, lambda s: s["settlement"] is not None, timeout=60)
        assert view["settlement"]["total_jpy"] >= 0
        conn = await asyncpg.connect(infra.database_url)
        try:
            assert await conn.fetchval("SELECT status FROM billing.settlements WHERE request_id = $1", rid) == "issued"
            # Its inbox came from the log: records billing re-reads after the switch are skipped.
            assert await conn.fetchval("SELECT count(*) FROM billing.processed_events") > 0
        finally:
            await conn.close()
    finally:
        await rebuild.drop(infra.database_url, "billing_replaced_test")


async def _only_billing_may_use_its_schema(infra) -> None:
    """Least privilege holds after a rebuild: the rebuilt schema and all in it are billing's role's, which
    reads and writes them; another service's role is refused them."""
    conn = await asyncpg.connect(infra.database_url)
    try:
        assert await conn.fetchval("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'billing'") \
            == "billing"
        owners = await conn.fetch("SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_class c"
                                  " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'billing'")
        assert owners and {r["owner"] for r in owners} == {"billing"}, owners
    finally:
        await conn.close()
    billing = await asyncpg.connect(infra.stack.service_database_url("billing"))
    intruder = await asyncpg.connect(infra.stack.service_database_url("eligibility"))
    try:
        async with billing.transaction():
            await billing.fetchval("SELECT count(*) FROM billing.settlements")
            await billing.execute("DELETE FROM billing.processed_events WHERE false")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await intruder.fetchval("SELECT count(*) FROM billing.settlements")
    finally:
        await billing.close()
        await intruder.close()


def test_a_service_without_a_projection_is_refused():
    with pytest.raises(rebuild.RebuildError, match="service: 'mailer' cannot be rebuilt"):
        rebuild.projection("mailer")


async def test_the_command_checks_a_rebuild_without_touching_the_service(after_demo, tmp_path):
    infra = after_demo
    await _built_equal(infra, "eligibility")  # quiet first
    env = {"KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap, "DATABASE_URL": infra.database_url, "COLUMNS": "250",
           "CANCELFLOW_STACK_DIR": str(tmp_path / "no-stack"), "PATH": os.environ["PATH"]}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cancelflow.cli", "rebuild", "eligibility", "--check", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(proc.communicate(), 180))[0].decode()
    assert proc.returncode == 0, out
    assert "the rebuilt tables equal eligibility's" in out and "contracts.events:" in out
    conn = await asyncpg.connect(infra.database_url)
    try:  # the scratch schema is gone, the service's is untouched
        schemas = {r[0] for r in await conn.fetch("SELECT schema_name FROM information_schema.schemata")}
    finally:
        await conn.close()
    assert "eligibility" in schemas and not any(s.startswith("eligibility_rebuild") for s in schemas)
