"""notifier's handlers: turn decisions and settlements into notifications due at a time."""

from __future__ import annotations

from datetime import datetime

from shared import topics
from shared.calendar import tokyo_date
from shared.consumer import Context
from shared.events import (CancellationAccepted, CancellationCompleted, CancellationRejected,
                           CancellationRequested, CancellationWithdrawn, SettlementIssued, SettlementVoided)
from shared.service import Runtime, Subscription
from shared.vocabulary import NotificationKind

from .domain import REMINDER_KINDS, reminder_schedule

ADD = ("INSERT INTO notifications (request_id, kind, due_at, days_before) VALUES ($1, $2, $3, $4)"
       " ON CONFLICT (request_id, kind, due_at) DO NOTHING")


async def _ensure_request(ctx: Context, request_id: str, contract_id: str | None) -> None:
    await ctx.conn.execute(
        "INSERT INTO requests (request_id, contract_id, status) VALUES ($1, $2, 'received')"
        " ON CONFLICT (request_id) DO NOTHING", request_id, contract_id or "")


async def on_requested(ctx: Context, e: CancellationRequested) -> None:
    await ctx.conn.execute(
        "INSERT INTO recipients (request_id, contract_id, customer_name, email) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (request_id) DO NOTHING", e.request_id, e.contract_id, e.customer.name, str(e.customer.email))


async def on_accepted(ctx: Context, e: CancellationAccepted) -> None:
    accepted_at = e.decided_at or ctx.envelope.occurred_at
    await _ensure_request(ctx, e.request_id, e.contract_id)
    await ctx.conn.execute(
        "UPDATE requests SET status = 'accepted', accepted_at = $2, effective_date = $3, offers = $4"
        " WHERE request_id = $1", e.request_id, accepted_at, e.effective_date, [o.value for o in e.offers])
    for item in reminder_schedule(effective_date=e.effective_date, accepted_at=accepted_at):
        days_before = None if item.due_at == accepted_at else (e.effective_date - tokyo_date(item.due_at)).days
        await ctx.conn.execute(ADD, e.request_id, item.kind.value, item.due_at, days_before)
    await _acknowledge_when_complete(ctx, e.request_id)


async def on_settlement_issued(ctx: Context, e: SettlementIssued) -> None:
    await _ensure_request(ctx, e.request_id, e.contract_id)
    await ctx.conn.execute(
        "UPDATE requests SET total_jpy = $2, paid_through = $3, settlement_status = 'issued' WHERE request_id = $1",
        e.request_id, e.total_jpy, e.paid_through)
    await _acknowledge_when_complete(ctx, e.request_id)


async def on_settlement_voided(ctx: Context, e: SettlementVoided) -> None:
    await ctx.conn.execute("UPDATE requests SET settlement_status = 'voided' WHERE request_id = $1", e.request_id)


async def _acknowledge_when_complete(ctx: Context, request_id: str) -> None:
    """The acknowledgement states the effective date, the final charge and the offers: it waits for both
    the acceptance and the settlement, whichever comes last, and is due at the acceptance time."""
    row = await ctx.conn.fetchrow(
        "SELECT accepted_at FROM requests WHERE request_id = $1 AND status = 'accepted'"
        " AND settlement_status = 'issued'", request_id)
    if row is not None:
        await ctx.conn.execute(ADD, request_id, NotificationKind.acknowledgement.value, row["accepted_at"], None)


async def on_rejected(ctx: Context, e: CancellationRejected) -> None:
    await _ensure_request(ctx, e.request_id, e.contract_id)
    await ctx.conn.execute(
        "UPDATE requests SET status = 'rejected', codes = $2, earliest_effective_date = $3 WHERE request_id = $1",
        e.request_id, [c.value for c in e.codes], e.earliest_effective_date)
    await ctx.conn.execute(ADD, e.request_id, NotificationKind.rejection.value,
                           e.decided_at or ctx.envelope.occurred_at, None)


async def _cancel_pending(ctx: Context, request_id: str, kinds: tuple[str, ...]) -> None:
    await ctx.conn.execute(
        "UPDATE notifications SET status = 'cancelled' WHERE request_id = $1 AND status = 'pending'"
        " AND kind = ANY($2::text[])", request_id, list(kinds))


async def on_withdrawn(ctx: Context, e: CancellationWithdrawn) -> None:
    await _ensure_request(ctx, e.request_id, e.contract_id)
    await ctx.conn.execute("UPDATE requests SET status = 'withdrawn' WHERE request_id = $1", e.request_id)
    await _cancel_pending(ctx, e.request_id, tuple(k.value for k in (*REMINDER_KINDS, NotificationKind.acknowledgement)))
    when: datetime = e.withdrawn_at or ctx.envelope.occurred_at
    await ctx.conn.execute(ADD, e.request_id, NotificationKind.withdrawal_confirmation.value, when, None)


async def on_completed(ctx: Context, e: CancellationCompleted) -> None:
    await ctx.conn.execute("UPDATE requests SET status = 'completed' WHERE request_id = $1", e.request_id)
    await _cancel_pending(ctx, e.request_id, tuple(k.value for k in REMINDER_KINDS))


def subscriptions(rt: Runtime) -> list[Subscription]:
    return [Subscription(
        topics=(topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS),
        handlers={
            CancellationRequested.event_type: on_requested,
            CancellationAccepted.event_type: on_accepted,
            CancellationRejected.event_type: on_rejected,
            CancellationWithdrawn.event_type: on_withdrawn,
            CancellationCompleted.event_type: on_completed,
            SettlementIssued.event_type: on_settlement_issued,
            SettlementVoided.event_type: on_settlement_voided,
        })]
