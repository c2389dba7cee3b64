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

from .domain import REMINDER_KINDS, reminder_schedule, withdrawal_notice

ADD = ("INSERT INTO notifications (request_id, kind, due_at, days_before) VALUES ($1, $2, $3, $4)"
       " ON CONFLICT (request_id, kind, due_at) DO NOTHING")

# The acknowledgement states the effective date, the final charge and the offers: it waits for both the
# acceptance and the settlement, whichever comes last, and is due at the acceptance time (see ACCEPTED and
# SETTLED below).

# The dispatcher LISTENs here: a notification that is due now goes out without waiting for its poll.
DUE_CHANNEL = "notifier_due"

# These handlers only write (what they need to read is read inside the statements), so every statement
# is deferred (ctx.defer): a batch's writes reach PostgreSQL in a few executemany round trips, in order.


async def _add(ctx: Context, rows: list[tuple[str, str, datetime, int | None]]) -> None:
    """Schedule notifications, and wake the dispatcher at commit."""
    for row in rows:
        ctx.defer(ADD, *row)
    await ctx.notify(DUE_CHANNEL)


async def on_requested(ctx: Context, e: CancellationRequested) -> None:
    ctx.defer(
        "INSERT INTO recipients (request_id, contract_id, customer_name, email) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (request_id) DO NOTHING", e.request_id, e.contract_id, e.customer.name, str(e.customer.email))


# The request row (created here if the settlement came first) and what it knows, the reminders, and the
# acknowledgement if the settlement is there already: one statement, so a run of acceptances in a batch
# is one executemany round trip.
ACCEPTED = """
WITH request AS (
    INSERT INTO requests (request_id, contract_id, status, accepted_at, effective_date, offers)
    VALUES ($1, $2, 'accepted', $3, $4, $5)
    ON CONFLICT (request_id) DO UPDATE SET status = 'accepted', accepted_at = excluded.accepted_at,
        effective_date = excluded.effective_date, offers = excluded.offers
    RETURNING request_id, accepted_at, settlement_status),
reminders AS (
    INSERT INTO notifications (request_id, kind, due_at, days_before)
    SELECT $1, kind, due_at, days_before FROM unnest($6::text[], $7::timestamptz[], $8::int[]) AS r(kind, due_at, days_before)
    ON CONFLICT (request_id, kind, due_at) DO NOTHING)
INSERT INTO notifications (request_id, kind, due_at, days_before)
SELECT request_id, 'acknowledgement', accepted_at, NULL FROM request WHERE settlement_status = 'issued'
ON CONFLICT (request_id, kind, due_at) DO NOTHING
"""

# The settlement's figures, and the acknowledgement if the acceptance is there already.
SETTLED = """
WITH request AS (
    INSERT INTO requests (request_id, contract_id, status, total_jpy, paid_through, settlement_status)
    VALUES ($1, $2, 'received', $3, $4, 'issued')
    ON CONFLICT (request_id) DO UPDATE SET total_jpy = excluded.total_jpy, paid_through = excluded.paid_through,
        settlement_status = 'issued'
    RETURNING request_id, status, accepted_at)
INSERT INTO notifications (request_id, kind, due_at, days_before)
SELECT request_id, 'acknowledgement', accepted_at, NULL FROM request WHERE status = 'accepted' AND accepted_at IS NOT NULL
ON CONFLICT (request_id, kind, due_at) DO NOTHING
"""


async def on_accepted(ctx: Context, e: CancellationAccepted) -> None:
    accepted_at = e.decided_at or ctx.envelope.occurred_at
    kinds, dues, days = [], [], []
    for item in reminder_schedule(effective_date=e.effective_date, accepted_at=accepted_at):
        kinds.append(item.kind.value)
        dues.append(item.due_at)
        days.append(None if item.due_at == accepted_at else (e.effective_date - tokyo_date(item.due_at)).days)
    ctx.defer(ACCEPTED, e.request_id, e.contract_id or "", accepted_at, e.effective_date, [o.value for o in e.offers],
              kinds, dues, days)
    await ctx.notify(DUE_CHANNEL)


async def on_settlement_issued(ctx: Context, e: SettlementIssued) -> None:
    ctx.defer(SETTLED, e.request_id, e.contract_id or "", e.total_jpy, e.paid_through)
    await ctx.notify(DUE_CHANNEL)


async def on_settlement_voided(ctx: Context, e: SettlementVoided) -> None:
    ctx.defer("UPDATE requests SET settlement_status = 'voided' WHERE request_id = $1", e.request_id)


async def on_rejected(ctx: Context, e: CancellationRejected) -> None:
    ctx.defer(
        "INSERT INTO requests (request_id, contract_id, status, codes, earliest_effective_date)"
        " VALUES ($1, $2, 'rejected', $3, $4) ON CONFLICT (request_id) DO UPDATE SET status = 'rejected',"
        " codes = excluded.codes, earliest_effective_date = excluded.earliest_effective_date",
        e.request_id, e.contract_id or "", [c.value for c in e.codes], e.earliest_effective_date)
    await _add(ctx, [(e.request_id, NotificationKind.rejection.value, e.decided_at or ctx.envelope.occurred_at, None)])


def _cancel_pending(ctx: Context, request_id: str, kinds: tuple[str, ...]) -> None:
    ctx.defer(
        "UPDATE notifications SET status = 'cancelled' WHERE request_id = $1 AND status = 'pending'"
        " AND kind = ANY($2::text[])", request_id, list(kinds))


async def on_withdrawn(ctx: Context, e: CancellationWithdrawn) -> None:
    ctx.defer(
        "INSERT INTO requests (request_id, contract_id, status, taken_offer) VALUES ($1, $2, 'withdrawn', $3)"
        " ON CONFLICT (request_id) DO UPDATE SET status = 'withdrawn', taken_offer = excluded.taken_offer",
        e.request_id, e.contract_id or "", e.taken_offer)
    _cancel_pending(ctx, e.request_id, tuple(k.value for k in (*REMINDER_KINDS, NotificationKind.acknowledgement)))
    when: datetime = e.withdrawn_at or ctx.envelope.occurred_at
    await _add(ctx, [(e.request_id, withdrawal_notice(e.taken_offer).value, when, None)])


async def on_completed(ctx: Context, e: CancellationCompleted) -> None:
    ctx.defer("UPDATE requests SET status = 'completed' WHERE request_id = $1", e.request_id)
    _cancel_pending(ctx, e.request_id, tuple(k.value for k in REMINDER_KINDS))


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
