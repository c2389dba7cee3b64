"""What a customer asks of intake, from the API or the cancel page alike: a cancellation (the request
recorded and `cancellation.requested` queued) or a withdrawal (`cancellation.withdrawal_requested`),
each in one transaction of its own."""

from __future__ import annotations

from dataclasses import dataclass

from shared.contract_calendar import tokyo_date
from shared.events import CancellationForm, WithdrawalRequested
from shared.messaging.consumer import store_transaction
from shared.messaging.outbox import Emitter
from shared.service import Runtime
from shared.vocabulary import RequestStatus

from .domain import AskWithdrawal, Refusal, RefuseWithdrawal, answer_withdrawal
from .store import IntakeStore, Recorded, new_request


async def submit_form(runtime: Runtime, form: CancellationForm, *, submission_id: str | None) -> Recorded:
    """Record the form (source http); the same key again gives the first request (IdempotencyConflict if the
    body differed)."""
    new = new_request(form, source="http", submission_id=submission_id, received_at=runtime.clock.now())
    async with store_transaction(runtime, IntakeStore) as store:
        recorded = await store.record(new)
        if recorded.created:
            Emitter(store.outbox, runtime.name, correlation_id=new.request_id)(
                new.requested(await store.data_key(form.contract_id)), key=form.contract_id)
    return recorded


@dataclass(frozen=True)
class WithdrawalAsked:
    """found=False: no such request. refused: why it cannot be withdrawn (the API's 409), else None; refusal:
    its kind (what the customer's page says)."""

    found: bool
    status: RequestStatus | None = None
    refused: str | None = None
    refusal: Refusal | None = None


async def ask_withdrawal(runtime: Runtime, request_id: str, taken_offer: str | None = None) -> WithdrawalAsked:
    """A withdrawal, taking `taken_offer` or none (SPEC sections 2 and 6): asked now, asked before (the same
    withdrawal again is one withdrawal, one take), or refused."""
    now = runtime.clock.now()
    async with store_transaction(runtime, IntakeStore) as store:
        state = await store.for_withdrawal(request_id)
        if state is None:
            return WithdrawalAsked(found=False)
        answer = answer_withdrawal(**state.facts(), today=tokyo_date(now), taken_offer=taken_offer)
        if isinstance(answer, RefuseWithdrawal):
            return WithdrawalAsked(True, state.status, answer.why, answer.refusal)
        if isinstance(answer, AskWithdrawal):
            await store.withdrawal_requested(request_id, now, answer.taken_offer)
            Emitter(store.outbox, runtime.name, correlation_id=request_id)(WithdrawalRequested(
                request_id=request_id, contract_id=state.contract_id, requested_at=now,
                taken_offer=answer.taken_offer), key=state.contract_id)
    return WithdrawalAsked(True, state.status)
