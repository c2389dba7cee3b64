"""eligibility's handlers: load from the store, decide in the domain, save, emit."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from shared import topics
from shared.contract_calendar import tokyo_date
from shared.events import (CancellationAccepted, CancellationCompleted, CancellationRejected,
                           CancellationRequested, CancellationWithdrawn, ContractSigned, EventData, OfferTaken,
                           WithdrawalRefused, WithdrawalRequested)
from shared.messaging.consumer import Context, Subscription, store_transaction
from shared.messaging.outbox import Emitter
from shared.service import Runtime

from .domain import (Accepted, AlreadyWithdrawn, CannotWithdraw, Decision, completion_cutoff, decide,
                     decide_withdrawal, hold_out)
from .store import EligibilityStore

Ctx = Context[EligibilityStore]


async def on_contract_signed(ctx: Ctx, e: ContractSigned) -> None:
    ctx.store.save_contract(e)


def on_cancellation_requested(offer_policy: Mapping, holdout_percent: int = 0):
    async def handle(ctx: Ctx, e: CancellationRequested) -> None:
        seen = await ctx.store.decision_inputs(e)
        if seen.decided:
            return  # already decided (a republished request): the first decision stands
        decision = hold_out(decide(contract=seen.contract, received_on=e.received_on,
                                   desired_effective_date=e.desired_effective_date, has_pending=seen.has_pending,
                                   reason=e.reason, offer_policy=offer_policy),
                            contract_id=e.contract_id, percent=holdout_percent)
        decided_at = ctx.now()
        ctx.store.save_decision(e, decision, decided_at)
        ctx.emit(decision_event(e, decision, decided_at), key=e.contract_id)

    return handle


def decision_event(e: CancellationRequested, decision: Decision, decided_at: datetime) -> EventData:
    if isinstance(decision, Accepted):
        return CancellationAccepted(
            request_id=e.request_id, contract_id=e.contract_id, effective_date=decision.effective_date,
            first_anniversary=decision.first_anniversary, offers=decision.offers, received_on=e.received_on,
            reason=e.reason, decided_at=decided_at, holdout=decision.holdout)
    return CancellationRejected(
        request_id=e.request_id, contract_id=e.contract_id, codes=decision.codes,
        earliest_effective_date=decision.earliest_effective_date, reason=e.reason, decided_at=decided_at,
        received_on=e.received_on)


async def on_withdrawal_requested(ctx: Ctx, e: WithdrawalRequested) -> None:
    found = await ctx.store.cancellation(e.request_id)
    key = (found.contract_id if found else None) or e.contract_id or e.request_id
    decision = decide_withdrawal(found and found.state, today=tokyo_date(ctx.now()), taken_offer=e.taken_offer)
    if isinstance(decision, AlreadyWithdrawn):
        return  # the same take (or plain withdrawal) again: it was made once
    if isinstance(decision, CannotWithdraw):
        ctx.emit(WithdrawalRefused(request_id=e.request_id, contract_id=key, why=decision.why), key=key)
        return
    now, offer = ctx.now(), decision.taken_offer
    await ctx.store.withdraw(e.request_id, now, offer)
    ctx.emit(CancellationWithdrawn(request_id=e.request_id, contract_id=key, withdrawn_at=now, taken_offer=offer),
             key=key)
    if offer is not None:  # in the withdrawal's transaction: exactly once per take
        ctx.emit(OfferTaken(request_id=e.request_id, contract_id=key, account_id=found.account_id, offer=offer,
                            reason=found.reason, plan=found.plan, taken_at=now), key=key)


async def complete_due_cancellations(rt: Runtime) -> int:
    """Complete every accepted cancellation whose effective date has come (Tokyo), in one transaction."""
    async with store_transaction(rt, EligibilityStore) as store:
        now = rt.clock.now()
        completed = await store.complete_due(completion_cutoff(tokyo_date(now)), now)
        for c in completed:
            emit = Emitter(store.outbox, rt.name, correlation_id=c.request_id)
            emit(CancellationCompleted(request_id=c.request_id, contract_id=c.contract_id,
                                       effective_date=c.effective_date, completed_at=now), key=c.contract_id)
    return len(completed)


def subscriptions(offer_policy: Mapping, holdout_percent: int = 0):
    def build(rt: Runtime) -> list[Subscription]:
        return [Subscription(
            topics=(topics.CONTRACTS, topics.REQUESTS),
            handlers={
                ContractSigned.event_type: on_contract_signed,
                CancellationRequested.event_type: on_cancellation_requested(offer_policy, holdout_percent),
                WithdrawalRequested.event_type: on_withdrawal_requested,
            },
            store=EligibilityStore)]
    return build
