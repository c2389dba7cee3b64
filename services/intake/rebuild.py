"""intake's state from the log: the contracts and payments from contracts.events; each request from its own
`cancellation.requested` (the form, the source and key, when it was received; the Idempotency-Key check's
body hash is the form's digest, computed the same way) and its `cancellation.withdrawal_requested`; the
status view from the decisions, settlements and notifications, as the consumer writes it."""

from __future__ import annotations

from shared import topics
from shared.events import (CancellationAccepted, CancellationCompleted, CancellationForm, CancellationRejected,
                           CancellationRequested, CancellationWithdrawn, ContractSigned, NotificationSent,
                           PaymentRecorded, SettlementIssued, SettlementVoided, WithdrawalRefused,
                           WithdrawalRequested)
from shared.messaging.projection import SILENT, Projection, through

from . import handlers as h
from . import store as s
from .domain import submission_digest

_FORM_FIELDS = set(CancellationForm.model_fields)


async def _requested(conn, envelope, e: CancellationRequested) -> None:
    form = CancellationForm.model_validate(e.model_dump(include=_FORM_FIELDS))
    form_json = form.model_dump(mode="json")
    new = s.NewRequest(e.request_id, form, form_json, submission_digest(form_json), e.source, e.submission_id,
                       e.received_at)
    await conn.execute(s._INSERT, *new.row())


async def _withdrawal_requested(conn, envelope, e: WithdrawalRequested) -> None:
    await conn.execute(s._WITHDRAWAL_REQUESTED + " AND withdrawal_requested_at IS NULL", e.request_id,
                       e.requested_at or envelope.occurred_at)


async def _notification_sent(conn, envelope, e: NotificationSent) -> None:
    s.IntakeStore(conn, SILENT).notification_sent(e)  # the consumer's write, without its log line per mail


def _handler(handler):
    return through(handler, s.IntakeStore, "intake")


PROJECTION = Projection(
    service="intake",
    # The requests first: every status-view write updates a request row.
    topics=(topics.CONTRACTS, topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS),
    apply={
        CancellationRequested.event_type: _requested,
        WithdrawalRequested.event_type: _withdrawal_requested,
        ContractSigned.event_type: _handler(h.on_contract_signed),
        PaymentRecorded.event_type: _handler(h.on_payment_recorded),
        CancellationAccepted.event_type: _handler(h.on_accepted),
        CancellationRejected.event_type: _handler(h.on_rejected),
        CancellationWithdrawn.event_type: _handler(h.on_withdrawn),
        WithdrawalRefused.event_type: _handler(h.on_withdrawal_refused),
        CancellationCompleted.event_type: _handler(h.on_completed),
        SettlementIssued.event_type: _handler(h.on_settlement_issued),
        SettlementVoided.event_type: _handler(h.on_settlement_voided),
        NotificationSent.event_type: _notification_sent,
    },
    own=frozenset({CancellationRequested.event_type, WithdrawalRequested.event_type}),
    bookkeeping={"requests": ("updated_at",), "contracts": ("updated_at",)})
