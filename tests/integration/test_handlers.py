"""Tier 2: one service's handlers driven by FastStream's in-memory TestKafkaBroker, against the real
PostgreSQL. Proves the handler's transaction: state, outbox row and inbox row together, duplicates
skipped, poison dead-lettered through the outbox."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

import orjson
import pytest
from faststream.kafka import TestKafkaBroker

from services.eligibility.app import create_app
from services.eligibility.settings import EligibilitySettings
from shared import topics
from shared.contract_calendar import tokyo_date
from shared.db import create_pool, migrate
from shared.events import CancellationRequested, ContractSigned, new_envelope

from tests.integration.own_database import own_database

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def handler_db(infra):
    """A database of its own, so the running stack's relays never see these outbox rows."""
    async with own_database(infra, "handlers") as url:
        yield url


async def _service_on_own_db(create, settings_cls, handler_db, infra):
    """A service app whose handlers run against the test database; its broker is driven by TestKafkaBroker."""
    app = create(settings_cls(database_url=handler_db, kafka_bootstrap_servers=infra.bootstrap,
                              api_keys="handler-tests"))  # intake's is required; the others ignore it
    rt = app.runtime
    await migrate(handler_db, rt.schema, rt.service_dir)
    rt.pool = await create_pool(handler_db, rt.schema)
    return app


@pytest.fixture
async def eligibility(handler_db, infra):
    app = await _service_on_own_db(create_app, EligibilitySettings, handler_db, infra)
    yield app
    await app.runtime.close_pool()


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


@pytest.fixture
async def intake(handler_db, infra):
    from services.intake.app import create_app as create_intake
    from services.intake.settings import IntakeSettings

    app = await _service_on_own_db(create_intake, IntakeSettings, handler_db, infra)
    yield app
    await app.runtime.close_pool()


def _submitted(contract_id: str, submission_id: str, reason: str = "TOO_DIFFICULT") -> bytes:
    from shared.events import CancellationSubmitted

    data = CancellationSubmitted(
        submission_id=submission_id, contract_id=contract_id, account_id="@a", plan="pro", reason=reason,
        customer={"name": "n", "email": "a@example.jp", "phone": "090-0000-0000"})
    return new_envelope(data, producer="upstream", correlation_id=submission_id, causation_id=None).to_bytes()


async def test_a_batch_of_submissions_is_inserted_at_once_and_each_key_counts_once(intake):
    """One batch: a new key, the same key again with the same body (one request), another new key (the
    fast path, one INSERT for the batch); then a batch where a key comes back with another body (that record
    is dead-lettered, the others still recorded: the record-by-record path)."""
    pool = intake.runtime.pool
    contract = f"C-{uuid.uuid4().hex[:8]}"
    a, b, c = (f"S-{uuid.uuid4().hex[:8]}" for _ in range(3))
    consumer = next(c for c in intake.runtime.consumers if c.preload is not None)
    prepared_sizes, preload = [], consumer.preload

    async def counting(store, items):
        prepared_sizes.append(len(items))
        return await preload(store, items)

    consumer.preload = counting
    async with TestKafkaBroker(intake.broker) as broker:
        await broker.publish_batch(_submitted(contract, a), _submitted(contract, a), _submitted(contract, b),
                                   topic=topics.SUBMISSIONS)
        await broker.publish_batch(_submitted(contract, c), _submitted(contract, b, reason="SWITCHING_TOOL"),
                                   topic=topics.SUBMISSIONS)
    assert prepared_sizes[0] == 3, "the first batch went through the one-INSERT path"
    rows = await pool.fetch("SELECT submission_id, request_id FROM requests WHERE contract_id = $1 ORDER BY received_at",
                            contract)
    assert sorted(r["submission_id"] for r in rows) == sorted([a, b, c])
    outbox = await pool.fetch("SELECT topic, value, headers FROM outbox WHERE key = $1 ORDER BY id", contract.encode())
    requested = [orjson.loads(r["value"]) for r in outbox if r["topic"] == topics.REQUESTS]
    assert sorted(e["data"]["submission_id"] for e in requested) == sorted([a, b, c]), "one event per key"
    assert {e["data"]["request_id"] for e in requested} == {r["request_id"] for r in rows}
    dlq = [r for r in await pool.fetch("SELECT value, headers FROM outbox WHERE topic = $1", topics.dlq(topics.SUBMISSIONS))
           if orjson.loads(r["value"])["data"]["contract_id"] == contract]
    assert len(dlq) == 1 and dict(map(tuple, dlq[0]["headers"]))["dlq.reason"].startswith("submission_id: already used")


def _record_covered(app) -> list[list[str]]:
    """Wrap the service's batch read (the store's `preload`) to record, per batch, which contracts it covered."""
    consumer = next(c for c in app.runtime.consumers if c.preload is not None)
    covered, preload = [], consumer.preload

    async def recording(store, items):
        result = await preload(store, items)
        covered.append(sorted(result.covered) if result else [])
        return result

    consumer.preload = recording
    return covered


async def test_a_batch_of_requests_is_read_at_once_and_decided_as_one_by_one(eligibility):
    """One batch: a request for a signed contract, two for another (the second finds the first pending),
    one for an unknown contract; then the first again (republished). The batch read covers the contracts
    one request touches; the others are read record by record; the decisions are the same either way."""
    pool = eligibility.runtime.pool
    one, two, unknown = (f"C-{uuid.uuid4().hex[:8]}" for _ in range(3))
    today = tokyo_date(datetime.now(timezone.utc))
    covered = _record_covered(eligibility)

    def signed(contract):
        return new_envelope(ContractSigned(contract_id=contract, account_id="@a", plan="pro", monthly_fee_jpy=5000,
                                           start_date=date(2020, 1, 1)), producer="up", correlation_id=contract,
                            causation_id=None).to_bytes()

    first = _requested(one, today)
    async with TestKafkaBroker(eligibility.broker) as broker:
        await broker.publish_batch(signed(one), signed(two), topic=topics.CONTRACTS)
        await broker.publish_batch(first, _requested(two, today), _requested(two, today), _requested(unknown, today),
                                   topic=topics.REQUESTS)
        again = orjson.loads(first) | {"event_id": str(uuid.uuid4())}  # republished: a new event, same request
        await broker.publish_batch(orjson.dumps(again), topic=topics.REQUESTS)

    assert covered[:3] == [[], sorted([one, unknown]), [one]], "the contract with two requests is read record by record"
    rows = await pool.fetch("SELECT contract_id, status, codes FROM cancellations WHERE contract_id = ANY($1)"
                            " ORDER BY decided_at", [one, two, unknown])
    by_contract = {}
    for r in rows:
        by_contract.setdefault(r["contract_id"], []).append((r["status"], list(r["codes"] or [])))
    assert by_contract[one] == [("accepted", [])], "decided once, the republished request changes nothing"
    assert by_contract[two][0] == ("accepted", [])
    assert by_contract[two][1][0] == "rejected" and "ALREADY_PENDING" in by_contract[two][1][1]
    assert by_contract[unknown] == [("rejected", ["CONTRACT_NOT_FOUND"])]


@pytest.fixture
async def billing(handler_db, infra):
    from services.billing.app import create_app as create_billing
    from services.billing.settings import BillingSettings

    app = await _service_on_own_db(create_billing, BillingSettings, handler_db, infra)
    yield app
    await app.runtime.close_pool()


async def test_a_batch_of_acceptances_reads_the_terms_at_once_and_settles_as_one_by_one(billing):
    """Terms read for the whole batch, except a contract whose payment is in the same batch: that one is
    read after the payment, so the payment counts. An acceptance before its contract waits for it."""
    from shared.events import CancellationAccepted, PaymentRecorded

    pool = billing.runtime.pool
    a, b, c = (f"C-{uuid.uuid4().hex[:8]}" for _ in range(3))

    def env(data) -> bytes:
        return new_envelope(data, producer="t", correlation_id="x", causation_id=None).to_bytes()

    def signed(contract):
        return env(ContractSigned(contract_id=contract, account_id="@a", plan="pro", monthly_fee_jpy=3000,
                                  start_date=date(2024, 1, 31)))

    def accepted(contract):
        return env(CancellationAccepted(request_id=f"R-{contract}", contract_id=contract,
                                        effective_date=date(2026, 6, 30), first_anniversary=date(2025, 1, 31),
                                        received_on=date(2026, 5, 10)))

    covered = _record_covered(billing)
    async with TestKafkaBroker(billing.broker) as broker:
        await broker.publish_batch(signed(a), signed(b), topic=topics.CONTRACTS)
        # One batch over both topics (one subscription): b's payment comes before its acceptance.
        await broker.publish_batch(env(PaymentRecorded(contract_id=b, billing_date=date(2026, 5, 31), amount_jpy=3000)),
                                   accepted(a), accepted(b), accepted(c), topic=topics.CONTRACTS)
    assert sorted([a, c]) in covered, covered
    rows = {r["contract_id"]: r for r in await pool.fetch(
        "SELECT contract_id, status, total_jpy FROM settlements WHERE contract_id = ANY($1)", [a, b, c])}
    assert rows[a]["status"] == "issued" and rows[b]["status"] == "issued"
    assert rows[b]["total_jpy"] == rows[a]["total_jpy"] - 3000, "b's payment in the same batch counted"
    assert rows[c]["status"] == "awaiting_contract"
    issued = await pool.fetch("SELECT value FROM outbox WHERE topic = $1 AND key = ANY($2)",
                              topics.SETTLEMENTS, [a.encode(), b.encode(), c.encode()])
    assert len(issued) == 2


@pytest.fixture
async def notifier(handler_db, infra):
    from services.notifier.app import create_app as create_notifier
    from services.notifier.settings import NotifierSettings

    app = await _service_on_own_db(create_notifier, NotifierSettings, handler_db, infra)
    yield app
    await app.runtime.close_pool()


@pytest.mark.parametrize("together", [False, True], ids=["batch-by-batch", "one-batch"])
async def test_a_late_copy_of_an_acceptance_does_not_move_an_ended_request_back(notifier, together):
    """A copy of an acceptance read after the request ended (a redelivery or a replay older than the inbox
    window: a new event id to the inbox) leaves notifier's record of it ended, and its reminders cancelled:
    a status only moves forward. Read batch by batch (each statement reads the table) and in one batch
    (the store's batch read, kept up to date by its own writes)."""
    from shared.events import CancellationAccepted, CancellationCompleted, CancellationWithdrawn

    pool = notifier.runtime.pool
    withdrawn, completed = (f"R-{uuid.uuid4().hex[:8]}" for _ in range(2))

    def env(data) -> bytes:
        return new_envelope(data, producer="t", correlation_id="x", causation_id=None).to_bytes()

    def accepted(request_id):
        return env(CancellationAccepted(request_id=request_id, contract_id=f"C-{request_id}",
                                        effective_date=date(2027, 6, 30), first_anniversary=date(2026, 1, 31),
                                        decided_at=datetime(2027, 3, 1, 1, tzinfo=timezone.utc)))

    first = [accepted(withdrawn), accepted(completed),
             env(CancellationWithdrawn(request_id=withdrawn, contract_id=f"C-{withdrawn}",
                                       withdrawn_at=datetime(2027, 3, 2, tzinfo=timezone.utc))),
             env(CancellationCompleted(request_id=completed, contract_id=f"C-{completed}",
                                       effective_date=date(2027, 6, 30)))]
    copies = [accepted(withdrawn), accepted(completed)]  # new event ids: what the inbox no longer remembers
    async with TestKafkaBroker(notifier.broker) as broker:
        if together:
            await broker.publish_batch(*first, *copies, topic=topics.DECISIONS)
        else:
            for record in [*first, *copies]:
                await broker.publish(record, topic=topics.DECISIONS)
    status = {r["request_id"]: r["status"] for r in await pool.fetch(
        "SELECT request_id, status FROM requests WHERE request_id = ANY($1)", [withdrawn, completed])}
    assert status == {withdrawn: "withdrawn", completed: "completed"}
    pending = await pool.fetch("SELECT request_id, kind FROM notifications WHERE request_id = ANY($1)"
                               " AND status = 'pending' AND kind LIKE '%reminder'", [withdrawn, completed])
    assert pending == [], "the copies scheduled no reminder again"
