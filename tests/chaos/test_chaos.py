"""Chaos: N cancellations flow while every service is killed -9 in turn, the broker restarts and the
database restarts. Then: every request exactly one decision, one settlement, one of each due e-mail;
outboxes drained; consumer lag zero.

CI runs N=200 (CHAOS_N); the full run is `CHAOS_N=2000 ./scripts/test tests/chaos -s`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path

import asyncpg
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from cancelflow.client import PipelineClient, read_topic, unique
from cancelflow.infra import kafka, postgres
from cancelflow.stack import SERVICES, Stack, StackConfig
from shared import topics
from shared.events import CancellationSubmitted, ContractSigned, new_envelope

N = int(os.environ.get("CHAOS_N", "200"))
GROUP_TOPICS = {
    "intake": (topics.SUBMISSIONS, topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS),
    "eligibility": (topics.CONTRACTS, topics.REQUESTS),
    "billing": (topics.CONTRACTS, topics.DECISIONS),
    "notifier": (topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS),
}
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chaos_stack():
    from tests.conftest import _local_ports

    root = Path(tempfile.mkdtemp(prefix="cancelflow-chaos-"))
    stack = Stack(StackConfig(root=root, ports=_local_ports(), api_keys=None, webhook_secret=None,
                              extra_env={"NOTIFIER_DISPATCH_INTERVAL_S": "0.1"}))
    try:
        stack.start_infra()
        for name in SERVICES:
            stack.start_service(name)
        stack.wait_healthy(list(SERVICES))
        yield stack
    finally:
        stack.down()
        if os.environ.get("CANCELFLOW_KEEP_TEST_STACK") is None:
            shutil.rmtree(root, ignore_errors=True)


def kill_and_restart(stack: Stack, name: str) -> None:
    stack.kill(name)
    stack.start_service(name)


async def restart_kafka(stack: Stack) -> None:
    stack.stop_process("kafka", stack.procs["kafka"].pid)
    stack.procs["kafka"] = stack.kafka_node.start(stack.logs / "kafka.log")
    await kafka.wait_ready(stack.bootstrap, 90)


async def restart_postgres(stack: Stack) -> None:
    stack.stop_process("postgres", stack.procs["postgres"].pid)
    stack.procs["postgres"] = stack.pg_node.start(stack.logs / "postgres.log")
    await postgres.wait_ready(stack.pg_node.admin_url, 60)


async def _count(url: str, sql: str) -> int:
    for _ in range(50):
        try:
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetchval(sql)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.3)
    raise TimeoutError(sql)


async def _wait_count(url: str, sql: str, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    value = -1
    while time.monotonic() < deadline:
        value = await _count(url, sql)
        if value >= expected:
            return value
        await asyncio.sleep(0.5)
    return value


async def test_nothing_lost_nothing_twice_under_kills_and_restarts(chaos_stack):
    stack = chaos_stack
    url = stack.database_url
    started = time.monotonic()
    async with PipelineClient(stack.bootstrap, f"http://127.0.0.1:{stack.ports.intake}", stack.mail_dir,
                              api_key=stack.api_key) as c:
        contracts = [unique("CH") for _ in range(N)]
        sends = [await c.producer.send(topics.CONTRACTS, new_envelope(
            ContractSigned(contract_id=cid, account_id="@" + cid.lower(), plan="pro", monthly_fee_jpy=10_000,
                           start_date=date(2024, 1, 31)), producer="upstream", correlation_id=cid,
            causation_id=None).to_bytes(), key=cid.encode()) for cid in contracts]
        await asyncio.gather(*sends)
        for schema in ("eligibility", "billing"):
            assert await _wait_count(url, f"SELECT count(*) FROM {schema}.contracts", N, 120) == N

        chaos = [
            ("kill -9 intake", lambda: kill_and_restart(stack, "intake")),
            ("kill -9 eligibility", lambda: kill_and_restart(stack, "eligibility")),
            ("restart kafka", lambda: restart_kafka(stack)),
            ("kill -9 billing", lambda: kill_and_restart(stack, "billing")),
            ("restart postgres", lambda: restart_postgres(stack)),
            ("kill -9 notifier", lambda: kill_and_restart(stack, "notifier")),
        ]
        waves = [contracts[i::len(chaos) + 1] for i in range(len(chaos) + 1)]
        submissions: dict[str, str] = {}

        async def submit(wave: list[str]) -> None:
            futures = []
            for i, cid in enumerate(wave):
                sid = unique("S")
                submissions[sid] = cid
                form = c.form(cid, who=f"chaos{len(submissions)}", reason="SWITCHING_TOOL")
                env = new_envelope(CancellationSubmitted(**form, submission_id=sid), producer="callcentre",
                                   correlation_id=sid, causation_id=None)
                futures.append(await c.producer.send(topics.SUBMISSIONS, env.to_bytes(), key=cid.encode()))
            await asyncio.gather(*futures)

        await submit(waves[0])
        for (what, action), wave in zip(chaos, waves[1:]):
            await asyncio.sleep(0.3)  # mid-flight: the previous wave is being handled
            result = action()
            if asyncio.iscoroutine(result):
                await result
            await submit(wave)
            print(f"chaos: {what} at {time.monotonic() - started:.1f}s")
        stack.wait_healthy(list(SERVICES), timeout=120)

        # Every request: decided, settled, three e-mails out (acknowledgement + two on-acceptance reminders).
        done_sql = ("SELECT count(*) FROM intake.requests WHERE status = 'accepted' AND settlement IS NOT NULL"
                    " AND jsonb_array_length(notifications) >= 3")
        done = await _wait_count(url, done_sql, N, timeout=120 + N * 0.1)
        flowed = time.monotonic() - started
        await asyncio.sleep(2.0)  # late duplicates, if any, would land now

        conn = await asyncpg.connect(url)
        try:
            requests = await conn.fetch("SELECT request_id, submission_id, status FROM intake.requests"
                                        " WHERE submission_id = ANY($1::text[])", list(submissions))
            decisions = await conn.fetchval("SELECT count(*) FROM eligibility.cancellations")
            settlements = await conn.fetchval("SELECT count(*) FROM billing.settlements WHERE status = 'issued'")
            sent_rows = await conn.fetchval("SELECT count(*) FROM notifier.notifications WHERE status = 'sent'")
            outbox = {s: await conn.fetchval(f"SELECT count(*) FROM {s}.outbox") for s in SERVICES}
        finally:
            await conn.close()
        request_ids = {r["request_id"] for r in requests}

        def events(records):
            out = []
            for r in records:
                e = orjson.loads(r.value)
                if e["data"].get("request_id") in request_ids:
                    out.append(e)
            return out

        decision_events = events(await read_topic(stack.bootstrap, topics.DECISIONS, timeout=60))
        settlement_events = events(await read_topic(stack.bootstrap, topics.SETTLEMENTS, timeout=60))
        sent_events = events(await read_topic(stack.bootstrap, topics.NOTIFICATIONS, timeout=60))
        mails = [m for m in c.mails() if m.headers.get("X-Cancelflow-Request-Id") in request_ids]

        admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
        await admin.start()
        lag = {}
        try:
            from aiokafka import AIOKafkaConsumer

            probe = AIOKafkaConsumer(bootstrap_servers=stack.bootstrap)
            await probe.start()
            for group, group_topics in GROUP_TOPICS.items():
                committed = await admin.list_consumer_group_offsets(group)
                tps = [tp for tp in committed if tp.topic in group_topics]
                ends = await probe.end_offsets(tps)
                lag[group] = sum(ends[tp] - committed[tp].offset for tp in tps)
            await probe.stop()
        finally:
            await admin.close()

    distinct = lambda evs, key: Counter(key(e) for e in {e["event_id"]: e for e in evs}.values())  # noqa: E731
    per_request_decisions = distinct(decision_events, lambda e: e["data"]["request_id"])
    per_request_settlements = distinct([e for e in settlement_events if e["event_type"] == "settlement.issued"],
                                       lambda e: e["data"]["request_id"])
    per_notification = distinct(sent_events, lambda e: (e["data"]["request_id"], e["data"]["kind"], e["data"]["due_at"]))
    per_mail = Counter((m.headers["X-Cancelflow-Request-Id"], m.headers["X-Cancelflow-Kind"],
                        m.headers["X-Cancelflow-Due-At"]) for m in mails)
    figures = {
        "N": N, "requests": len(requests), "completed_flows": done, "seconds": round(flowed, 1),
        "decision_rows": decisions, "decision_events_distinct": len(per_request_decisions),
        "decision_records_on_topic": len(decision_events),
        "settlements_issued": settlements, "settlement_events_distinct": len(per_request_settlements),
        "notifications_sent_rows": sent_rows, "notification_events_distinct": len(per_notification),
        "emails": len(mails), "emails_distinct": len(per_mail), "outbox_left": outbox, "lag": lag,
    }
    print("\nchaos figures:", figures)
    assert len(requests) == N and {r["status"] for r in requests} == {"accepted"}
    assert done == N
    assert decisions == N and set(per_request_decisions.values()) == {1} and len(per_request_decisions) == N
    assert settlements == N and set(per_request_settlements.values()) == {1} and len(per_request_settlements) == N
    assert sent_rows == 3 * N and set(per_notification.values()) == {1} and len(per_notification) == 3 * N
    assert len(mails) == 3 * N and set(per_mail.values()) == {1}, "no e-mail sent twice"
    assert outbox == {s: 0 for s in SERVICES}
    assert lag == {g: 0 for g in GROUP_TOPICS}
