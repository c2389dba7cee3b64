"""Tier 2: one service's handlers driven by FastStream's in-memory TestKafkaBroker, against the real
PostgreSQL. Proves the handler's transaction: state, outbox row and inbox row together, duplicates
skipped, poison dead-lettered through the outbox."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

import asyncpg
import orjson
import pytest
from faststream.kafka import TestKafkaBroker

from services.eligibility.app import create_app
from services.eligibility.settings import EligibilitySettings
from shared import topics
from shared.calendar import tokyo_date
from shared.db import create_pool, migrate
from shared.events import CancellationRequested, ContractSigned, new_envelope

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def handler_db(infra):
    """A database of its own, so the running stack's relays never see these outbox rows."""
    name = f"handlers_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(infra.admin_url())
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    yield infra.admin_url(name)
    admin = await asyncpg.connect(infra.admin_url())
    await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture
async def eligibility(handler_db, infra):
    app = create_app(EligibilitySettings(database_url=handler_db, kafka_bootstrap_servers=infra.bootstrap))
    rt = app.runtime
    await migrate(handler_db, rt.schema, rt.service_dir)
    rt.pool = await create_pool(handler_db, rt.schema)
    yield app
    await rt.close_pool()


def _requested(contract_id: str, received_on: date) -> bytes:
    rid = str(uuid.uuid4())
    data = CancellationRequested(
        request_id=rid, source="http", received_at=datetime.now(timezone.utc), received_on=received_on,
        contract_id=contract_id, account_id="@a", plan="pro", reason="TOO_DIFFICULT",
        customer={"name": "n", "email": "a@example.jp", "phone": "090-0000-0000"})
    return new_envelope(data, producer="intake", correlation_id=rid, causation_id=None).to_bytes()


async def test_decision_state_outbox_and_inbox_commit_together(eligibility):
    pool = eligibility.runtime.pool
    contract = f"C-{uuid.uuid4().hex[:8]}"
    signed = new_envelope(ContractSigned(contract_id=contract, account_id="@a", plan="pro", monthly_fee_jpy=5000,
                                         start_date=date(2020, 1, 1)), producer="up", correlation_id=contract,
                          causation_id=None).to_bytes()
    requested = _requested(contract, tokyo_date(datetime.now(timezone.utc)))
    async with TestKafkaBroker(eligibility.broker) as broker:
        await broker.publish(signed, topic=topics.CONTRACTS, key=contract.encode())
        await broker.publish(requested, topic=topics.REQUESTS, key=contract.encode())
        await broker.publish(requested, topic=topics.REQUESTS, key=contract.encode())  # redelivered
        await broker.publish(b"\xff not json", topic=topics.REQUESTS, key=contract.encode())

    event_id = uuid.UUID(orjson.loads(requested)["event_id"])
    rows = await pool.fetch("SELECT status, effective_date FROM cancellations WHERE contract_id = $1", contract)
    assert [r["status"] for r in rows] == ["accepted"]
    outbox = await pool.fetch("SELECT topic, value, headers FROM outbox WHERE key = $1 ORDER BY id", contract.encode())
    assert [r["topic"] for r in outbox] == [topics.DECISIONS, topics.dlq(topics.REQUESTS)]
    accepted = orjson.loads(outbox[0]["value"])
    assert accepted["event_type"] == "cancellation.accepted"
    assert accepted["causation_id"] == str(event_id)
    assert accepted["correlation_id"] == orjson.loads(requested)["correlation_id"]
    assert accepted["data"]["effective_date"] == rows[0]["effective_date"].isoformat()
    assert outbox[1]["value"] == b"\xff not json"
    assert dict(map(tuple, outbox[1]["headers"]))["dlq.reason"].startswith("value: not JSON")
    assert await pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id) == 1


async def test_a_failing_handler_rolls_back_only_its_own_record(eligibility, monkeypatch):
    """A handler error dead-letters that record; its half-done writes are rolled back (savepoint)."""
    pool = eligibility.runtime.pool
    contract = f"C-{uuid.uuid4().hex[:8]}"
    import services.eligibility.handlers as h

    def boom(**kwargs):
        raise RuntimeError("decision blew up")

    monkeypatch.setattr(h, "decide", boom)
    requested = _requested(contract, date(2026, 1, 1))
    async with TestKafkaBroker(eligibility.broker) as broker:
        await broker.publish(requested, topic=topics.REQUESTS, key=contract.encode())
    assert await pool.fetchval("SELECT count(*) FROM cancellations WHERE contract_id = $1", contract) == 0
    event_id = uuid.UUID(orjson.loads(requested)["event_id"])
    # Not marked processed: a replay from the DLQ after a fix is handled normally.
    assert await pool.fetchval("SELECT count(*) FROM processed_events WHERE event_id = $1", event_id) == 0
    dlq = await pool.fetch("SELECT headers FROM outbox WHERE key = $1", contract.encode())
    assert len(dlq) == 1 and "decision blew up" in dict(map(tuple, dlq[0]["headers"]))["dlq.reason"]
