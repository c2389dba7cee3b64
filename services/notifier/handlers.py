"""notifier's handlers: turn decisions and settlements into notifications due at a time."""

from __future__ import annotations

from shared import topics
from shared.events import (CancellationAccepted, CancellationCompleted, CancellationRejected,
                           CancellationRequested, CancellationWithdrawn, CustomerErasureRequested, SettlementIssued,
                           SettlementVoided)
from shared.messaging.consumer import Context, Subscription
from shared.service import Runtime
from shared.vocabulary import NotificationKind

from .domain import (acknowledgement, cancelled_by_completion, cancelled_by_withdrawal, reminder_schedule,
                     withdrawal_notice)
from .store import NotifierStore

Ctx = Context[NotifierStore]


async def on_requested(ctx: Ctx, e: CancellationRequested) -> None:
    ctx.store.save_recipient(e)


async def on_accepted(ctx: Ctx, e: CancellationAccepted) -> None:
    accepted_at = e.decided_at or ctx.envelope.occurred_at
    await ctx.store.accepted(e, accepted_at, reminder_schedule(effective_date=e.effective_date, accepted_at=accepted_at),
                             acknowledge=acknowledgement)


async def on_settlement_issued(ctx: Ctx, e: SettlementIssued) -> None:
    await ctx.store.settled(e, acknowledge=acknowledgement)


async def on_settlement_voided(ctx: Ctx, e: SettlementVoided) -> None:
    ctx.store.settlement_voided(e.request_id)


async def on_rejected(ctx: Ctx, e: CancellationRejected) -> None:
    ctx.store.rejected(e)
    ctx.store.schedule(e.request_id, NotificationKind.rejection, e.decided_at or ctx.envelope.occurred_at)


async def on_withdrawn(ctx: Ctx, e: CancellationWithdrawn) -> None:
    ctx.store.withdrawn(e.request_id, e.contract_id or "", e.taken_offer)
    ctx.store.cancel_pending(e.request_id, cancelled_by_withdrawal())
    ctx.store.schedule(e.request_id, withdrawal_notice(e.taken_offer), e.withdrawn_at or ctx.envelope.occurred_at)


async def on_completed(ctx: Ctx, e: CancellationCompleted) -> None:
    ctx.store.completed(e.request_id)
    ctx.store.cancel_pending(e.request_id, cancelled_by_completion())


async def on_erasure_requested(ctx: Ctx, e: CustomerErasureRequested) -> None:
    ctx.store.erase(e.contract_id, e.requested_at or ctx.envelope.occurred_at)


def subscriptions(rt: Runtime) -> list[Subscription]:
    return [Subscription(topics=(topics.CONTRACTS,), store=NotifierStore,
                         handlers={CustomerErasureRequested.event_type: on_erasure_requested}),
            Subscription(
        topics=(topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS),
        handlers={
            CancellationRequested.event_type: on_requested,
            CancellationAccepted.event_type: on_accepted,
            CancellationRejected.event_type: on_rejected,
            CancellationWithdrawn.event_type: on_withdrawn,
            CancellationCompleted.event_type: on_completed,
            SettlementIssued.event_type: on_settlement_issued,
            SettlementVoided.event_type: on_settlement_voided,
        },
        store=NotifierStore)]
