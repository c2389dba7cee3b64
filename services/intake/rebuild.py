"""intake's state from the log: the contracts and payments from contracts.events; each request from its own
`cancellation.requested` (the form, the source and key, when it was received; the Idempotency-Key check's
body hash is the form's digest, computed the same way) and its `cancellation.withdrawal_requested`; the
status view from the decisions, settlements and notifications, as the consumer writes it."""

from __future__ import annotations

from shared import topics
from shared.events import (CancellationAccepted, CancellationCompleted, CancellationForm, CancellationRejected,
                           CancellationRequested, CancellationWithdrawn, ContractSigned, Customer,
                           CustomerErasureRequested, NotificationSent,
                           PaymentRecorded, SettlementIssued, SettlementVoided, WithdrawalRefused,
                           WithdrawalRequested, WithdrawalSubmitted)
from shared.messaging.projection import SILENT, Projection, through
from shared.sealing import DataKey, Unreadable, unseal

from . import handlers as h
from . import store as s
from .domain import submission_digest

_FORM_FIELDS = set(CancellationForm.model_fields)


async def _requested(conn, envelope, e: CancellationRequested) -> None:
    fields = e.model_dump(mode="json", include=_FORM_FIELDS - {"customer"})
    customer = e.customer or await _opened(conn, e)
    if customer is None:  # erased: the row keeps no customer anyway; the live row's digest stands
        digest = await conn.fetchval(_LIVE_DIGEST, e.request_id) or submission_digest(fields)
        await conn.execute(s._INSERT, e.request_id, e.contract_id, e.source, e.submission_id, digest, fields,
                           e.received_at, e.received_on, e.reason.value)
        await conn.execute(_ERASED_WITH_ITS_KEY, e.request_id, e.contract_id)
        return
    form = CancellationForm.model_validate(fields | {"customer": customer})
    form_json = form.model_dump(mode="json")
    new = s.NewRequest(e.request_id, form, form_json, submission_digest(form_json), e.source, e.submission_id,
                       e.received_at)
    await conn.execute(s._INSERT, *new.row())


_LIVE_DIGEST = "SELECT body_hash FROM intake.requests WHERE request_id = $1"
# The erasure (contracts.events, read first) found no request rows yet: this one was erased with its key.
_ERASED_WITH_ITS_KEY = ("UPDATE requests SET erased_at = (SELECT erased_at FROM subject_keys WHERE contract_id = $2)"
                        " WHERE request_id = $1")


async def _opened(conn, e: CancellationRequested) -> Customer | None:
    """The sealed customer, opened with the contract's data key (carried over from intake's own schema); None
    when the key is erased. The request's digest covers the customer as submitted."""
    if e.customer_sealed is None:
        return None
    row = await conn.fetchrow(s._KEY, e.contract_id)
    key = DataKey(e.contract_id, row["key_id"], bytes(row["key"])) if row else None
    try:
        return unseal(e.customer_sealed, e.contract_id, key)
    except Unreadable:
        return None


# Upstream withdrawal submissions (cancellation.submissions): the ones that acted are those an own
# withdrawal_requested was caused by; kept in a table of the build's session until that event is read.
_SUBMITTED = ("CREATE TEMP TABLE IF NOT EXISTS rebuild_withdrawal_submitted (event_id text PRIMARY KEY,"
              " submission_id text, request_id text, taken_offer text)")


async def _withdrawal_submitted(conn, envelope, e: WithdrawalSubmitted) -> None:
    await conn.execute(_SUBMITTED)
    await conn.execute("INSERT INTO rebuild_withdrawal_submitted VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                       str(envelope.event_id), e.submission_id, e.request_id,
                       e.taken_offer.value if e.taken_offer else None)


async def _withdrawal_requested(conn, envelope, e: WithdrawalRequested) -> None:
    await conn.execute(s._WITHDRAWAL_REQUESTED + " AND withdrawal_requested_at IS NULL", e.request_id,
                       e.requested_at or envelope.occurred_at, e.taken_offer.value if e.taken_offer else None)
    if envelope.causation_id:
        await conn.execute(_SUBMITTED)
        await conn.execute("INSERT INTO withdrawal_submissions (submission_id, request_id, taken_offer)"
                           " SELECT submission_id, request_id, taken_offer FROM rebuild_withdrawal_submitted"
                           " WHERE event_id = $1 ON CONFLICT DO NOTHING", envelope.causation_id)


async def _notification_sent(conn, envelope, e: NotificationSent) -> None:
    s.IntakeStore(conn, SILENT).notification_sent(e)  # the consumer's write, without its log line per mail


def _handler(handler):
    return through(handler, s.IntakeStore, "intake")


PROJECTION = Projection(
    service="intake",
    # The requests first: every status-view write updates a request row.
    topics=(topics.CONTRACTS, topics.SUBMISSIONS, topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS,
            topics.NOTIFICATIONS),
    apply={
        CancellationRequested.event_type: _requested,
        WithdrawalRequested.event_type: _withdrawal_requested,
        WithdrawalSubmitted.event_type: _withdrawal_submitted,
        ContractSigned.event_type: _handler(h.on_contract_signed),
        CustomerErasureRequested.event_type: _handler(h.on_erasure_requested),
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
    # The signatures seen within the tolerance too: a rebuilt intake would otherwise take their replays.
    carried=("subject_keys", "seen_signatures"),
    bookkeeping={"requests": ("updated_at",), "contracts": ("updated_at",),
                 "withdrawal_submissions": ("recorded_at",)})
