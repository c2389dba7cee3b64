"""intake's consumers: Kafka submissions (same validation as HTTP) and the status view."""

from __future__ import annotations

import logging

from shared import topics
from shared.consumer import Context
from shared.events import (CancellationAccepted, CancellationCompleted, CancellationForm, CancellationRejected,
                           CancellationSubmitted, CancellationWithdrawn, NotificationSent, PoisonMessage,
                           SettlementIssued, SettlementVoided, WithdrawalRefused, WithdrawalSubmitted)
from shared.service import Runtime, Subscription

from .domain import RefuseWithdrawal
from .store import (IdempotencyConflict, ask_withdrawal, existing_request, insert_requests, new_request,
                    queue_requested, record_request, record_withdrawal_submission)

log = logging.getLogger(__name__)


def _form(e: CancellationSubmitted) -> CancellationForm:
    return CancellationForm.model_validate(e.model_dump(exclude={"submission_id"}))


async def prepare_submissions(conn, rt: Runtime, items: list) -> dict:
    """The batch's submissions inserted with one statement: {event_id: (NewRequest, created)}."""
    news = {envelope.event_id: new_request(_form(e), source="kafka", submission_id=e.submission_id,
                                           received_at=rt.clock.now())
            for envelope, e in items if isinstance(e, CancellationSubmitted)}
    created = await insert_requests(conn, list(news.values()))
    return {event_id: (new, new.request_id in created) for event_id, new in news.items()}


async def on_submitted(ctx: Context, e: CancellationSubmitted) -> None:
    try:
        if ctx.prepared is not None and ctx.envelope.event_id in ctx.prepared:
            new, created = ctx.prepared[ctx.envelope.event_id]
            if created:
                await queue_requested(ctx.conn, new, correlation_id=ctx.envelope.correlation_id,
                                      causation_id=str(ctx.envelope.event_id))
            else:
                await existing_request(ctx.conn, new)  # the same key before: same body, or a conflict
            return
        await record_request(ctx.conn, _form(e), source="kafka", submission_id=e.submission_id,
                             received_at=ctx.now(), correlation_id=ctx.envelope.correlation_id,
                             causation_id=str(ctx.envelope.event_id))
    except IdempotencyConflict as exc:
        raise PoisonMessage(str(exc)) from None


async def on_withdrawal_submitted(ctx: Context, e: WithdrawalSubmitted) -> None:
    """An upstream withdrawal (maybe taking an offer): checked as the HTTP API checks it; what it would answer
    409 or 404 is dead-lettered with the reason, and a submission_id acts once."""
    try:
        if not await record_withdrawal_submission(ctx.conn, e.submission_id, e.request_id, e.taken_offer):
            return
    except IdempotencyConflict as exc:
        raise PoisonMessage(str(exc)) from None
    outcome = await ask_withdrawal(ctx.conn, e.request_id, taken_offer=e.taken_offer, now=ctx.now(),
                                   correlation_id=ctx.envelope.correlation_id, causation_id=str(ctx.envelope.event_id))
    if outcome is None:
        raise PoisonMessage(f"request_id: unknown request {e.request_id}")
    if isinstance(outcome.answer, RefuseWithdrawal):
        raise PoisonMessage(f"{outcome.answer.field}: {outcome.answer.why}")


# Status changes only move forward: an answer never goes back to "received", an end is final.
# The status view is written, never read, by these handlers: each write is deferred (ctx.defer), so a
# batch's updates go to PostgreSQL in a few executemany round trips, still in order.
_ANSWERABLE = "status = 'received'"
_OPEN = "status IN ('received', 'accepted')"


async def on_accepted(ctx: Context, e: CancellationAccepted) -> None:
    ctx.defer(
        f"UPDATE requests SET status = 'accepted', effective_date = $2, first_anniversary = $3, offers = $4,"
        f" first_answer_at = coalesce(first_answer_at, $5), updated_at = now() WHERE request_id = $1 AND {_ANSWERABLE}",
        e.request_id, e.effective_date, e.first_anniversary, [o.value for o in e.offers],
        e.decided_at or ctx.envelope.occurred_at)


async def on_rejected(ctx: Context, e: CancellationRejected) -> None:
    ctx.defer(
        f"UPDATE requests SET status = 'rejected', codes = $2, earliest_effective_date = $3,"
        f" first_answer_at = coalesce(first_answer_at, $4), updated_at = now() WHERE request_id = $1 AND {_ANSWERABLE}",
        e.request_id, [c.value for c in e.codes], e.earliest_effective_date, e.decided_at or ctx.envelope.occurred_at)


async def on_withdrawn(ctx: Context, e: CancellationWithdrawn) -> None:
    ctx.defer(
        f"UPDATE requests SET status = 'withdrawn', taken_offer = $2, updated_at = now()"
        f" WHERE request_id = $1 AND {_OPEN}", e.request_id, e.taken_offer)


async def on_withdrawal_refused(ctx: Context, e: WithdrawalRefused) -> None:
    ctx.defer("UPDATE requests SET withdrawal_refused = $2, updated_at = now() WHERE request_id = $1",
                           e.request_id, e.why)


async def on_completed(ctx: Context, e: CancellationCompleted) -> None:
    ctx.defer(
        f"UPDATE requests SET status = 'completed', updated_at = now() WHERE request_id = $1 AND {_OPEN}",
        e.request_id)


async def on_settlement_issued(ctx: Context, e: SettlementIssued) -> None:
    settlement = e.model_dump(mode="json", exclude={"request_id", "contract_id"}) | {"status": "issued"}
    ctx.defer("UPDATE requests SET settlement = $2, updated_at = now() WHERE request_id = $1",
                           e.request_id, settlement)


async def on_settlement_voided(ctx: Context, e: SettlementVoided) -> None:
    ctx.defer(
        "UPDATE requests SET settlement = coalesce(settlement, '{}'::jsonb) || '{\"status\": \"voided\"}'::jsonb,"
        " updated_at = now() WHERE request_id = $1", e.request_id)


async def on_notification_sent(ctx: Context, e: NotificationSent) -> None:
    entry = e.model_dump(mode="json", exclude={"request_id"})
    log.info("notification %s sent to %s", e.kind.value, e.recipient,
             extra={"request_id": e.request_id, "correlation_id": ctx.envelope.correlation_id})
    ctx.defer(
        "UPDATE requests SET notifications = notifications || $2::jsonb, updated_at = now() WHERE request_id = $1",
        e.request_id, [entry])


def subscriptions(rt: Runtime) -> list[Subscription]:
    return [Subscription(topics=(topics.SUBMISSIONS,), handlers={CancellationSubmitted.event_type: on_submitted,
                                   WithdrawalSubmitted.event_type: on_withdrawal_submitted},
                         prepare=prepare_submissions),
            # The status view: five events per request, none on the way to the customer's e-mails, so they
            # are collected for up to status_collect_ms and written a batch at a time.
            Subscription(
        topics=(topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS),
        collect_ms=rt.settings.status_collect_ms,
        handlers={
            CancellationAccepted.event_type: on_accepted,
            CancellationRejected.event_type: on_rejected,
            CancellationWithdrawn.event_type: on_withdrawn,
            WithdrawalRefused.event_type: on_withdrawal_refused,
            CancellationCompleted.event_type: on_completed,
            SettlementIssued.event_type: on_settlement_issued,
            SettlementVoided.event_type: on_settlement_voided,
            NotificationSent.event_type: on_notification_sent,
        })]
