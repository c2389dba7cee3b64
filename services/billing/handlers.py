"""billing's handlers: the payment ledger and the final settlement of each accepted cancellation."""

from __future__ import annotations

from datetime import date, datetime

from shared import topics
from shared.events import (CancellationAccepted, CancellationWithdrawn, ChargeLine, ContractSigned,
                           PaymentRecorded, SettlementIssued, SettlementVoided)
from shared.messaging.consumer import Context, Subscription
from shared.service import Runtime

from .domain import Settlement, settle, voiding
from .store import BillingStore, Terms

Ctx = Context[BillingStore]


async def on_contract_signed(ctx: Ctx, e: ContractSigned) -> None:
    ctx.store.save_contract(e)
    awaiting = await ctx.store.awaiting(e.contract_id)
    terms = await ctx.store.terms(e.contract_id) if awaiting else None
    for a in awaiting:
        settlement, at = _settle(terms, a.received_on, a.effective_date), ctx.now()
        await ctx.store.issue_awaiting(a, settlement, at)
        ctx.emit(settlement_issued(a.request_id, e.contract_id, settlement, at), key=e.contract_id)


async def on_payment_recorded(ctx: Ctx, e: PaymentRecorded) -> None:
    ctx.store.save_payment(e)


async def on_accepted(ctx: Ctx, e: CancellationAccepted) -> None:
    if e.received_on is None:
        raise ValueError("data.received_on: billing needs the received-on date to settle")
    terms = await ctx.store.terms(e.contract_id)
    if terms is None:
        await ctx.store.await_contract(e)  # the acceptance came before the contract: settled when it arrives
        return
    settlement, at = _settle(terms, e.received_on, e.effective_date), ctx.now()
    if await ctx.store.issue(e.request_id, e.contract_id, e.received_on, e.effective_date, settlement, at):
        ctx.emit(settlement_issued(e.request_id, e.contract_id, settlement, at), key=e.contract_id)


async def on_withdrawn(ctx: Ctx, e: CancellationWithdrawn) -> None:
    held = await ctx.store.settlement(e.request_id)
    outcome = voiding(held.status if held else None)
    if outcome.void:  # at the withdrawal's time (the log's), so a rebuild gets the same
        ctx.store.void(e.request_id, e.withdrawn_at or ctx.envelope.occurred_at)
    if outcome.announce:
        ctx.emit(SettlementVoided(request_id=e.request_id, contract_id=held.contract_id), key=held.contract_id)


def _settle(terms: Terms, received_on: date, effective_date: date) -> Settlement:
    return settle(start_date=terms.start_date, monthly_fee_jpy=terms.monthly_fee_jpy, received_on=received_on,
                  effective_date=effective_date, paid_billing_dates=terms.paid_billing_dates)


def settlement_issued(request_id: str, contract_id: str, settlement: Settlement,
                      issued_at: datetime) -> SettlementIssued:
    return SettlementIssued(
        request_id=request_id, contract_id=contract_id, total_jpy=settlement.total_jpy, issued_at=issued_at,
        charges=tuple(ChargeLine(billing_date=c.billing_date, amount_jpy=c.amount_jpy) for c in settlement.charges),
        refund_jpy=settlement.refund_jpy, paid_through=settlement.paid_through)


def subscriptions(rt: Runtime) -> list[Subscription]:
    return [Subscription(
        topics=(topics.CONTRACTS, topics.DECISIONS),
        handlers={
            ContractSigned.event_type: on_contract_signed,
            PaymentRecorded.event_type: on_payment_recorded,
            CancellationAccepted.event_type: on_accepted,
            CancellationWithdrawn.event_type: on_withdrawn,
        },
        store=BillingStore)]
