"""intake's consumers: Kafka submissions (same validation as HTTP), the status view, and the contracts
(what the quote and the cancel page read)."""

from __future__ import annotations

import logging

from shared import topics
from shared.contract_calendar import tokyo_date
from shared.events import (CancellationAccepted, CancellationCompleted, CancellationRejected,
                           CancellationSubmitted, CancellationWithdrawn, ContractSigned, CustomerErasureRequested,
                           NotificationSent, PaymentRecorded, PoisonMessage, SettlementIssued, SettlementVoided,
                           WithdrawalRefused, WithdrawalRequested, WithdrawalSubmitted)
from shared.messaging.consumer import Context, Subscription
from shared.service import Runtime
from shared.vocabulary import RequestStatus

from .domain import AskWithdrawal, IdempotencyConflict, RefuseWithdrawal, answer_withdrawal
from .store import IntakeStore

log = logging.getLogger(__name__)

Ctx = Context[IntakeStore]


async def on_submitted(ctx: Ctx, e: CancellationSubmitted) -> None:
    try:
        recorded = await ctx.store.record_submission(ctx.envelope.event_id, e, ctx.now())
    except IdempotencyConflict as exc:
        raise PoisonMessage(str(exc)) from None
    if recorded.created:  # the same key before: the first request stands, nothing new to announce
        ctx.emit(recorded.new.requested(await ctx.store.data_key(e.contract_id)), key=e.contract_id)


async def on_withdrawal_submitted(ctx: Ctx, e: WithdrawalSubmitted) -> None:
    """An upstream withdrawal (maybe taking an offer), checked as the HTTP API checks it: what the API would
    answer 404 or 409 is dead-lettered with the reason; a submission_id acts once."""
    try:
        if not await ctx.store.withdrawal_submission(e.submission_id, e.request_id, e.taken_offer):
            return
    except IdempotencyConflict as exc:
        raise PoisonMessage(str(exc)) from None
    state = await ctx.store.for_withdrawal(e.request_id)
    if state is None:
        raise PoisonMessage(f"request_id: unknown request {e.request_id}")
    answer = answer_withdrawal(**state.facts(), today=tokyo_date(ctx.now()), taken_offer=e.taken_offer)
    if isinstance(answer, RefuseWithdrawal):
        raise PoisonMessage(f"{answer.field}: {answer.why}")
    if isinstance(answer, AskWithdrawal):
        await ctx.store.withdrawal_requested(e.request_id, ctx.now(), answer.taken_offer)
        ctx.emit(WithdrawalRequested(request_id=e.request_id, contract_id=state.contract_id, requested_at=ctx.now(),
                                     taken_offer=answer.taken_offer), key=state.contract_id)


# The status view. An answer's time is when it was decided (older producers: when it was published).
async def on_accepted(ctx: Ctx, e: CancellationAccepted) -> None:
    ctx.store.accepted(e, e.decided_at or ctx.envelope.occurred_at)


async def on_rejected(ctx: Ctx, e: CancellationRejected) -> None:
    ctx.store.rejected(e, e.decided_at or ctx.envelope.occurred_at)


async def on_withdrawn(ctx: Ctx, e: CancellationWithdrawn) -> None:
    ctx.store.withdrawn(e.request_id, e.taken_offer)


async def on_withdrawal_refused(ctx: Ctx, e: WithdrawalRefused) -> None:
    ctx.store.withdrawal_refused(e.request_id, e.why)


async def on_completed(ctx: Ctx, e: CancellationCompleted) -> None:
    ctx.store.moved(e.request_id, RequestStatus.completed)


async def on_settlement_issued(ctx: Ctx, e: SettlementIssued) -> None:
    ctx.store.settlement_issued(e)


async def on_settlement_voided(ctx: Ctx, e: SettlementVoided) -> None:
    ctx.store.settlement_voided(e.request_id)


async def on_notification_sent(ctx: Ctx, e: NotificationSent) -> None:
    log.info("notification %s sent to %s", e.kind.value, e.recipient,
             extra={"request_id": e.request_id, "correlation_id": ctx.envelope.correlation_id})
    ctx.store.notification_sent(e)


async def on_contract_signed(ctx: Ctx, e: ContractSigned) -> None:
    ctx.store.contract_signed(e)


async def on_payment_recorded(ctx: Ctx, e: PaymentRecorded) -> None:
    ctx.store.payment_recorded(e)


async def on_erasure_requested(ctx: Ctx, e: CustomerErasureRequested) -> None:
    ctx.store.erase(e.contract_id, e.requested_at or ctx.envelope.occurred_at)


def subscriptions(rt: Runtime) -> list[Subscription]:
    def submissions_store(conn, outbox) -> IntakeStore:
        store = IntakeStore(conn, outbox)
        store.clock = rt.clock  # the batch insert stamps received_at
        return store

    return [Subscription(topics=(topics.SUBMISSIONS,), handlers={CancellationSubmitted.event_type: on_submitted,
                                   WithdrawalSubmitted.event_type: on_withdrawal_submitted},
                         store=submissions_store),
            # The status view: five events per request, none on the way to the customer's e-mails, so they
            # are collected for up to status_collect_ms and written a batch at a time.
            Subscription(
        topics=(topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS),
        collect_ms=rt.settings.status_collect_ms, store=IntakeStore,
        handlers={
            CancellationAccepted.event_type: on_accepted,
            CancellationRejected.event_type: on_rejected,
            CancellationWithdrawn.event_type: on_withdrawn,
            WithdrawalRefused.event_type: on_withdrawal_refused,
            CancellationCompleted.event_type: on_completed,
            SettlementIssued.event_type: on_settlement_issued,
            SettlementVoided.event_type: on_settlement_voided,
            NotificationSent.event_type: on_notification_sent,
        }),
            Subscription(topics=(topics.CONTRACTS,), store=IntakeStore,
                         handlers={ContractSigned.event_type: on_contract_signed,
                                   PaymentRecorded.event_type: on_payment_recorded,
                                   CustomerErasureRequested.event_type: on_erasure_requested})]
