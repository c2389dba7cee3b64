"""Handlers against in-memory stores (cosmicpython's FakeUnitOfWork): load, decide, save, emit. The same
handlers run on real Kafka and PostgreSQL in tests/integration/test_handlers.py."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import date, datetime, timezone

import orjson
import pytest

from services.billing import handlers as billing
from services.billing.store import Held, Terms
from services.eligibility import handlers as eligibility
from services.eligibility.domain import DEFAULT_OFFER_POLICY, CancellationState, ContractTerms
from services.eligibility.store import DecisionInputs, Withdrawable
from services.notifier import handlers as notifier
from services.notifier.domain import RequestFacts
from shared.events import (CancellationAccepted, CancellationRequested, CancellationWithdrawn, SettlementIssued,
                           WithdrawalRequested, new_envelope)
from shared.messaging.consumer import Context
from shared.messaging.outbox import Outbox
from shared.vocabulary import NotificationKind

NOW = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)


class FixedClock:
    def now(self) -> datetime:
        return NOW


class FakeEligibilityStore:
    def __init__(self, contracts: dict[str, ContractTerms], cancellations: dict | None = None) -> None:
        self.contracts = contracts
        self.cancellations = cancellations or {}  # request_id -> (contract_id, CancellationState)
        self.decisions: list = []
        self.withdrawn: list[str] = []

    async def decision_inputs(self, e: CancellationRequested) -> DecisionInputs:
        contract = self.contracts.get(e.contract_id)
        pending = any(c == e.contract_id and s.status == "accepted" for c, s in self.cancellations.values())
        return DecisionInputs(contract, e.request_id in self.cancellations, pending)

    def save_decision(self, e, decision, decided_at) -> None:
        self.decisions.append((e.request_id, decision))
        status = "accepted" if hasattr(decision, "offers") else "rejected"
        self.cancellations[e.request_id] = (e.contract_id, CancellationState(status, getattr(decision, "effective_date", None)))

    async def cancellation(self, request_id: str) -> Withdrawable | None:
        if request_id not in self.cancellations:
            return None
        contract_id, state = self.cancellations[request_id]
        return Withdrawable(contract_id, state, "SWITCHING_TOOL", "@" + contract_id.lower(), "pro")

    async def withdraw(self, request_id: str, at: datetime, taken_offer: str | None = None) -> None:
        self.withdrawn.append(request_id)
        contract_id, state = self.cancellations[request_id]
        self.cancellations[request_id] = (contract_id, replace(state, status="withdrawn", taken_offer=taken_offer))


def _context(store, data) -> tuple[Context, Outbox]:
    envelope = new_envelope(data, producer="test", correlation_id="corr", causation_id=None)
    outbox = Outbox(conn=None, schema="test")
    return Context(store, envelope, FixedClock(), outbox, "test"), outbox


def _emitted(outbox: Outbox) -> list[dict]:
    return [orjson.loads(value) for _, _, value, _ in outbox.rows]


def _requested(contract_id: str) -> CancellationRequested:
    return CancellationRequested(
        request_id=str(uuid.uuid4()), source="http", received_at=NOW, received_on=date(2026, 5, 1),
        contract_id=contract_id, account_id="@a", plan="pro", reason="TOO_DIFFICULT",
        customer={"name": "n", "email": "a@example.jp", "phone": "090-0000-0000"})


async def test_a_request_is_decided_saved_and_announced_once() -> None:
    store = FakeEligibilityStore({"C-1": ContractTerms("C-1", date(2024, 1, 1), 5000)})
    handle = eligibility.on_cancellation_requested(DEFAULT_OFFER_POLICY)
    e = _requested("C-1")
    ctx, outbox = _context(store, e)
    await handle(ctx, e)
    await handle(ctx, e)  # the same request again: the first decision stands
    assert [d[0] for d in store.decisions] == [e.request_id]
    [event] = _emitted(outbox)
    assert event["event_type"] == "cancellation.accepted" and event["correlation_id"] == "corr"
    assert event["data"]["effective_date"] == "2026-06-15" and event["data"]["offers"] == ["guided_training"]


async def test_a_second_request_for_a_contract_finds_the_first_pending() -> None:
    store = FakeEligibilityStore({"C-1": ContractTerms("C-1", date(2024, 1, 1), 5000)})
    handle = eligibility.on_cancellation_requested(DEFAULT_OFFER_POLICY)
    for e in (_requested("C-1"), _requested("C-1"), _requested("C-unknown")):
        await handle(_context(store, e)[0], e)
    assert [type(d).__name__ for _, d in store.decisions] == ["Accepted", "Rejected", "Rejected"]
    assert [c.value for c in store.decisions[1][1].codes] == ["ALREADY_PENDING"]
    assert [c.value for c in store.decisions[2][1].codes] == ["CONTRACT_NOT_FOUND"]


async def test_a_withdrawal_before_the_date_withdraws_after_it_is_refused() -> None:
    store = FakeEligibilityStore({}, {"R-1": ("C-1", CancellationState("accepted", date(2026, 6, 30))),
                                      "R-2": ("C-2", CancellationState("accepted", date(2026, 5, 1)))})
    events = []
    for rid in ("R-1", "R-2", "R-3"):
        e = WithdrawalRequested(request_id=rid)
        ctx, outbox = _context(store, e)
        await eligibility.on_withdrawal_requested(ctx, e)
        events += _emitted(outbox)
    assert store.withdrawn == ["R-1"]
    assert [(x["event_type"], x["data"].get("why")) for x in events] == [
        ("cancellation.withdrawn", None),
        ("cancellation.withdrawal_refused", "the effective date 2026-05-01 has come: the contract has ended"),
        ("cancellation.withdrawal_refused", "unknown request")]


async def test_taking_an_offer_withdraws_and_tells_the_contract_system_once() -> None:
    offers = ("consultation", "discount")
    store = FakeEligibilityStore({}, {"R-1": ("C-1", CancellationState("accepted", date(2026, 6, 30), offers))})
    events = []
    for offer in ("downgrade", "discount", "discount", "consultation"):  # not offered, taken, again, another
        e = WithdrawalRequested(request_id="R-1", taken_offer=offer)
        ctx, outbox = _context(store, e)
        await eligibility.on_withdrawal_requested(ctx, e)
        events += _emitted(outbox)
    assert store.withdrawn == ["R-1"]
    assert [(x["event_type"], x["data"].get("taken_offer") or x["data"].get("offer") or x["data"].get("why"))
            for x in events] == [
        ("cancellation.withdrawal_refused", "offer downgrade is not among the request's offers (consultation, discount)"),
        ("cancellation.withdrawn", "discount"),
        ("retention.offer_taken", "discount"),
        ("cancellation.withdrawal_refused", "the request is withdrawn")]
    taken = events[2]["data"]
    assert (taken["contract_id"], taken["account_id"], taken["reason"], taken["plan"]) == (
        "C-1", "@c-1", "SWITCHING_TOOL", "pro")


class FakeBillingStore:
    def __init__(self, terms: dict[str, Terms]) -> None:
        self.terms_ = terms
        self.issued: dict[str, object] = {}
        self.waiting: list[str] = []
        self.voided: list[str] = []

    async def terms(self, contract_id: str) -> Terms | None:
        return self.terms_.get(contract_id)

    async def await_contract(self, e) -> None:
        self.waiting.append(e.request_id)

    async def issue(self, request_id, contract_id, received_on, effective_date, settlement, at) -> bool:
        if request_id in self.issued:
            return False
        self.issued[request_id] = settlement
        return True

    async def settlement(self, request_id: str) -> Held | None:
        if request_id in self.voided:
            return Held("C-1", "voided")
        return Held("C-1", "issued") if request_id in self.issued else None

    def void(self, request_id: str, at: datetime) -> None:
        self.voided.append(request_id)


async def test_an_acceptance_is_settled_once_and_a_withdrawal_voids_it() -> None:
    store = FakeBillingStore({"C-1": Terms(date(2024, 1, 31), 3000, frozenset({date(2026, 5, 31)}))})
    accepted = CancellationAccepted(request_id="R-1", contract_id="C-1", effective_date=date(2026, 6, 30),
                                    first_anniversary=date(2025, 1, 31), received_on=date(2026, 5, 10))
    early = accepted.model_copy(update={"request_id": "R-2", "contract_id": "C-unknown"})
    emitted = []
    for handler, e in ((billing.on_accepted, accepted), (billing.on_accepted, accepted), (billing.on_accepted, early),
                       (billing.on_withdrawn, CancellationWithdrawn(request_id="R-1")),
                       (billing.on_withdrawn, CancellationWithdrawn(request_id="R-1"))):
        ctx, outbox = _context(store, e)
        await handler(ctx, e)
        emitted += _emitted(outbox)
    assert [x["event_type"] for x in emitted] == ["settlement.issued", "settlement.voided"]
    assert emitted[0]["data"]["charges"] == [] and emitted[0]["data"]["paid_through"] == "2026-06-30"
    assert store.waiting == ["R-2"], "an acceptance before its contract waits for it"
    assert store.voided == ["R-1"], "a second withdrawal voids nothing more"


class FakeNotifierStore:
    def __init__(self) -> None:
        self.known: dict[str, RequestFacts] = {}
        self.scheduled: list[tuple[str, NotificationKind, datetime]] = []

    def _learn(self, request_id: str, **changes) -> RequestFacts:
        self.known[request_id] = replace(self.known.get(request_id, RequestFacts("received")), **changes)
        return self.known[request_id]

    async def accepted(self, e, accepted_at, reminders, *, acknowledge) -> None:
        self.scheduled += [(e.request_id, r.kind, r.due_at) for r in reminders]
        self._acknowledge(e.request_id, acknowledge(self._learn(e.request_id, status="accepted", accepted_at=accepted_at)))

    async def settled(self, e, *, acknowledge) -> None:
        self._acknowledge(e.request_id, acknowledge(self._learn(e.request_id, settlement="issued")))

    def _acknowledge(self, request_id, ack) -> None:
        if ack is not None:
            self.schedule(request_id, NotificationKind.acknowledgement, ack[0], cancelled=ack[1])

    def schedule(self, request_id, kind, due_at, *, cancelled=False) -> None:
        self.scheduled.append((request_id, kind, due_at) + (("cancelled",) if cancelled else ()))


@pytest.mark.parametrize("settlement_first", [False, True], ids=["acceptance-first", "settlement-first"])
async def test_the_acknowledgement_waits_for_the_acceptance_and_the_settlement(settlement_first: bool) -> None:
    store = FakeNotifierStore()
    accepted = CancellationAccepted(request_id="R-1", contract_id="C-1", effective_date=date(2026, 6, 30),
                                    first_anniversary=date(2025, 1, 31), received_on=date(2026, 5, 10), decided_at=NOW)
    issued = SettlementIssued(request_id="R-1", contract_id="C-1", charges=(), total_jpy=0, refund_jpy=0,
                              paid_through=date(2026, 6, 30))
    steps = [(notifier.on_accepted, accepted), (notifier.on_settlement_issued, issued)]
    for handler, e in reversed(steps) if settlement_first else steps:
        acknowledged = [s for s in store.scheduled if s[1] is NotificationKind.acknowledgement]
        assert acknowledged == [], "nothing to acknowledge before both are in"
        ctx, _ = _context(store, e)
        await handler(ctx, e)
    assert [s for s in store.scheduled if s[1] is NotificationKind.acknowledgement] == [
        ("R-1", NotificationKind.acknowledgement, NOW)]


async def test_a_settlement_read_after_the_withdrawal_records_the_acknowledgement_cancelled() -> None:
    """The row the withdrawal would have cancelled, had it been read after: the same rows in either order."""
    store = FakeNotifierStore()
    store._learn("R-1", status="withdrawn", accepted_at=NOW)
    issued = SettlementIssued(request_id="R-1", contract_id="C-1", charges=(), total_jpy=0, refund_jpy=0,
                              paid_through=date(2026, 6, 30))
    ctx, _ = _context(store, issued)
    await notifier.on_settlement_issued(ctx, issued)
    assert store.scheduled == [("R-1", NotificationKind.acknowledgement, NOW, "cancelled")]
