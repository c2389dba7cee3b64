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

from .domain import withdrawal_refusal
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
    """found=False: no such request. refused: why it cannot be withdrawn (the API's 409), else None."""

    found: bool
    status: RequestStatus | None = None
    refused: str | None = None


async def ask_withdrawal(runtime: Runtime, request_id: str) -> WithdrawalAsked:
    now = runtime.clock.now()
    async with store_transaction(runtime, IntakeStore) as store:
        row = await store.for_withdrawal(request_id)
        if row is None:
            return WithdrawalAsked(found=False)
        refused = withdrawal_refusal(row.status, row.effective_date, today=tokyo_date(now))
        if refused is not None:
            return WithdrawalAsked(True, row.status, refused)
        if row.withdrawal_requested_at is None:  # asking twice is one withdrawal
            await store.withdrawal_requested(request_id, now)
            Emitter(store.outbox, runtime.name, correlation_id=request_id)(WithdrawalRequested(
                request_id=request_id, contract_id=row.contract_id, requested_at=now), key=row.contract_id)
    return WithdrawalAsked(True, row.status)
