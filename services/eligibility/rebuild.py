"""eligibility's state from the log: contracts from contracts.events, every decision, withdrawal and
completion from its own cancellation.* events (recorded as taken, not decided again)."""

from __future__ import annotations

from shared import topics
from shared.events import (CancellationAccepted, CancellationCompleted, CancellationRejected,
                           CancellationWithdrawn, ContractSigned)
from shared.messaging.projection import Projection

from . import store as s

# A relay may have published a decision twice: the first copy is the decision.
_ONCE = " ON CONFLICT (request_id) DO NOTHING"


async def _signed(conn, envelope, e: ContractSigned) -> None:
    conn.defer(s._UPSERT_CONTRACT, e.contract_id, e.account_id, e.plan.value, e.monthly_fee_jpy,
               e.start_date)


async def _accepted(conn, envelope, e: CancellationAccepted) -> None:
    conn.defer(s._ACCEPTED + _ONCE, e.request_id, e.contract_id, e.reason.value if e.reason else None,
               e.received_on, e.effective_date, e.first_anniversary, [o.value for o in e.offers],
               e.decided_at or envelope.occurred_at, e.holdout)


async def _rejected(conn, envelope, e: CancellationRejected) -> None:
    conn.defer(s._REJECTED + _ONCE, e.request_id, e.contract_id, e.reason.value if e.reason else None,
               e.received_on, [c.value for c in e.codes], e.earliest_effective_date,
               e.decided_at or envelope.occurred_at)


async def _withdrawn(conn, envelope, e: CancellationWithdrawn) -> None:
    conn.defer(s._WITHDRAW, e.request_id, e.withdrawn_at or envelope.occurred_at,
               e.taken_offer.value if e.taken_offer else None)


async def _completed(conn, envelope, e: CancellationCompleted) -> None:
    contract_id = await conn.fetchval(
        "UPDATE cancellations SET status = 'completed', closed_at = $2 WHERE request_id = $1 RETURNING contract_id",
        e.request_id, e.completed_at or envelope.occurred_at)
    if contract_id is not None:
        conn.defer(s._END_CONTRACT, contract_id, e.effective_date)


PROJECTION = Projection(
    service="eligibility",
    topics=(topics.CONTRACTS, topics.DECISIONS),
    apply={ContractSigned.event_type: _signed, CancellationAccepted.event_type: _accepted,
           CancellationRejected.event_type: _rejected, CancellationWithdrawn.event_type: _withdrawn,
           CancellationCompleted.event_type: _completed},
    own=frozenset({CancellationAccepted.event_type, CancellationRejected.event_type,
                   CancellationWithdrawn.event_type, CancellationCompleted.event_type}),
    bookkeeping={"contracts": ("updated_at",)})
