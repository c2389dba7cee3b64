"""The bounded inbox on the real PostgreSQL (SPEC section 8): event ids are kept for the window by the
service's clock, a redelivery inside it is still skipped, pruning removes only what is older, in batches,
and never waits for a row a consumer's transaction holds."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, timedelta, timezone

import orjson
import pytest
from faststream.kafka import TestKafkaBroker

from services.eligibility.app import create_app
from services.eligibility.settings import EligibilitySettings
from shared import topics
from shared.contract_calendar import tokyo_date
from shared.db import create_pool, migrate
from shared.events import CancellationRequested, ContractSigned, new_envelope
from shared.messaging import inbox

from tests.integration.own_database import own_database

pytestmark = pytest.mark.integration

WINDOW = timedelta(days=7)


class MovableClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


@pytest.fixture
async def eligibility(infra):
    """eligibility on a database of its own (exact row counts), its clock in the test's hand."""
    async with own_database(infra, "inbox") as url:
        app = create_app(EligibilitySettings(database_url=url, kafka_bootstrap_servers=infra.bootstrap))
        await migrate(url, app.runtime.schema, app.runtime.service_dir)
        app.runtime.pool = await create_pool(url, app.runtime.schema)
        app.runtime.clock = MovableClock(datetime(2026, 3, 1, 9, 0, tzinfo=timezone.utc))
        yield app
        await app.runtime.close_pool()


def _signed(contract: str) -> bytes:
    return new_envelope(ContractSigned(contract_id=contract, account_id="@a", plan="pro", monthly_fee_jpy=5000,
                                       start_date=date(2020, 1, 1)), producer="up", correlation_id=contract,
                        causation_id=None).to_bytes()


def _requested(contract: str, at: datetime) -> bytes:
    rid = str(uuid.uuid4())
    data = CancellationRequested(
        request_id=rid, source="http", received_at=at, received_on=tokyo_date(at), contract_id=contract,
        account_id="@a", plan="pro", reason="TOO_DIFFICULT",
        customer={"name": "n", "email": "a@example.jp", "phone": "090-0000-0000"})
    return new_envelope(data, producer="intake", correlation_id=rid, causation_id=None).to_bytes()


def _id(raw: bytes) -> uuid.UUID:
    return uuid.UUID(orjson.loads(raw)["event_id"])


async def test_a_redelivery_inside_the_window_is_skipped_and_pruning_removes_only_older_ids(eligibility):
    rt = eligibility.runtime
    pool, clock = rt.pool, rt.clock
    t0 = clock.at
    first, second = f"C-{uuid.uuid4().hex[:8]}", f"C-{uuid.uuid4().hex[:8]}"
    signed_first, requested_first = _signed(first), _requested(first, t0)
    async with TestKafkaBroker(eligibility.broker) as broker:
        await broker.publish(signed_first, topic=topics.CONTRACTS, key=first.encode())
        await broker.publish(requested_first, topic=topics.REQUESTS, key=first.encode())
        clock.at = t0 + timedelta(days=6, hours=23)  # still inside the window
        await broker.publish(_signed(second), topic=topics.CONTRACTS, key=second.encode())
        assert await inbox.prune(pool, clock.now() - WINDOW) == 0
        await broker.publish(requested_first, topic=topics.REQUESTS, key=first.encode())  # redelivered
    assert await pool.fetchval("SELECT count(*) FROM cancellations WHERE contract_id = $1", first) == 1
    decisions = await pool.fetchval("SELECT count(*) FROM outbox WHERE key = $1 AND topic = $2", first.encode(),
                                    topics.DECISIONS)
    assert decisions == 1  # the copy had no second effect
    recorded = {r["event_id"]: r["processed_at"] for r in await pool.fetch("SELECT * FROM processed_events")}
    assert recorded[_id(requested_first)] == t0  # by the service's clock, as the window is
    assert len(recorded) == 3

    clock.at = t0 + timedelta(days=7, minutes=1)  # the first two ids are now older than the window
    assert await inbox.prune(pool, clock.now() - WINDOW, batch=1) == 2
    left = {r["event_id"] for r in await pool.fetch("SELECT event_id FROM processed_events")}
    assert left == set(recorded) - {_id(signed_first), _id(requested_first)}


async def test_pruning_goes_in_batches_and_skips_a_row_a_transaction_holds(eligibility):
    pool = eligibility.runtime.pool
    now = datetime(2026, 6, 1, tzinfo=timezone.utc)
    old = [(uuid.uuid4(), now - timedelta(days=8, seconds=n)) for n in range(2500)]
    young = [(uuid.uuid4(), now - timedelta(days=6, seconds=n)) for n in range(300)]
    await pool.executemany(
        "INSERT INTO processed_events (event_id, event_type, topic, partition, \"offset\", processed_at)"
        " VALUES ($1, 'x', 't', 0, 0, $2)", old + young)
    held = old[0][0]
    async with pool.acquire() as other:
        tx = other.transaction()
        await tx.start()
        await other.execute("SELECT 1 FROM processed_events WHERE event_id = $1 FOR UPDATE", held)
        # Does not wait for the held row: everything else older than the window goes, 1,000 per transaction.
        pruned = await asyncio.wait_for(inbox.prune(pool, now - WINDOW, batch=1000, pause_s=0), 30)
        assert pruned == 2499
        await tx.rollback()
    assert await inbox.prune(pool, now - WINDOW) == 1
    left = {r["event_id"] for r in await pool.fetch("SELECT event_id FROM processed_events")}
    assert left == {i for i, _ in young}


async def test_the_pruning_loop_prunes_by_the_service_clock(eligibility):
    rt = eligibility.runtime
    base = rt.clock.at
    await rt.pool.executemany(
        "INSERT INTO processed_events (event_id, event_type, topic, partition, \"offset\", processed_at)"
        " VALUES ($1, 'x', 't', 0, 0, $2)", [(uuid.uuid4(), base - timedelta(days=1)) for _ in range(5)])
    task = asyncio.create_task(inbox.pruning_loop(rt.pool, rt.clock, window=WINDOW, interval_s=0.05, batch=2))
    try:
        await asyncio.sleep(0.3)
        assert await rt.pool.fetchval("SELECT count(*) FROM processed_events") == 5  # inside the window
        rt.clock.at = base + timedelta(days=7)
        for _ in range(200):
            if await rt.pool.fetchval("SELECT count(*) FROM processed_events") == 0:
                break
            await asyncio.sleep(0.05)
        assert await rt.pool.fetchval("SELECT count(*) FROM processed_events") == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_window_is_a_setting_per_service(monkeypatch):
    monkeypatch.setenv("BILLING_INBOX_WINDOW_DAYS", "14")
    from services.billing.settings import BillingSettings

    assert BillingSettings().inbox_window_days == 14
    assert EligibilitySettings().inbox_window_days == 7
