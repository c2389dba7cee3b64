"""billing's state from the log: contracts and the payment ledger from contracts.events; each settlement
from the acceptance and the withdrawal (cancellation.decisions) and from its own settlement.issued, which
carries the charges as computed then (not computed again)."""

from __future__ import annotations

from shared import topics
from shared.events import (CancellationAccepted, CancellationWithdrawn, ContractSigned, PaymentRecorded,
                           SettlementIssued)
from shared.messaging.projection import Projection

from . import store as s
from .domain import voiding

# Read after the decisions: a settlement withdrawn before it was read here stays voided.
_ISSUED = ("UPDATE settlements SET status = CASE WHEN status = 'voided' THEN 'voided' ELSE 'issued' END,"
           " charges = $2, total_jpy = $3, paid_through = $4, issued_at = $5 WHERE request_id = $1")


async def _signed(conn, envelope, e: ContractSigned) -> None:
    conn.defer(s._UPSERT_CONTRACT, e.contract_id, e.start_date, e.monthly_fee_jpy)


async def _payment(conn, envelope, e: PaymentRecorded) -> None:
    conn.defer(s._PAYMENT, e.contract_id, e.billing_date, e.amount_jpy)


async def _accepted(conn, envelope, e: CancellationAccepted) -> None:
    if e.received_on is not None:  # without it billing dead-lettered the acceptance: no settlement
        conn.defer(s._AWAIT_CONTRACT, e.request_id, e.contract_id, e.received_on, e.effective_date)


async def _withdrawn(conn, envelope, e: CancellationWithdrawn) -> None:
    held = await conn.fetchrow(s._SETTLEMENT, e.request_id)
    if voiding(held["status"] if held else None).void:
        conn.defer(s._VOID, e.request_id, e.withdrawn_at or envelope.occurred_at)


async def _issued(conn, envelope, e: SettlementIssued) -> None:
    charges = [{"billing_date": c.billing_date.isoformat(), "amount_jpy": c.amount_jpy} for c in e.charges]
    conn.defer(_ISSUED, e.request_id, charges, e.total_jpy, e.paid_through,
               e.issued_at or envelope.occurred_at)


PROJECTION = Projection(
    service="billing",
    topics=(topics.CONTRACTS, topics.DECISIONS, topics.SETTLEMENTS),
    apply={ContractSigned.event_type: _signed, PaymentRecorded.event_type: _payment,
           CancellationAccepted.event_type: _accepted, CancellationWithdrawn.event_type: _withdrawn,
           SettlementIssued.event_type: _issued},
    own=frozenset({SettlementIssued.event_type}),
    bookkeeping={"payments": ("recorded_at",)})
