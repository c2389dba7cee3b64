"""eligibility's handlers: parse -> domain -> state + outbox, in the consumer's transaction."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared import topics
from shared.calendar import tokyo_date
from shared.consumer import Context
from shared.events import (CancellationAccepted, CancellationCompleted, CancellationRejected,
                           CancellationRequested, CancellationWithdrawn, ContractSigned, OfferTaken,
                           WithdrawalRefused, WithdrawalRequested)
from shared.outbox import emit_from
from shared.service import Runtime, Subscription

from .domain import (Accepted, AlreadyWithdrawn, CannotWithdraw, ContractTerms, decide, decide_withdrawal,
                     hold_out)

log = logging.getLogger(__name__)


async def on_contract_signed(ctx: Context, e: ContractSigned) -> None:
    ctx.defer(  # a write nobody reads back here: sent with the next statement (see shared.consumer)
        "INSERT INTO contracts (contract_id, account_id, plan, monthly_fee_jpy, start_date)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (contract_id) DO UPDATE SET account_id = excluded.account_id,"
        " plan = excluded.plan, monthly_fee_jpy = excluded.monthly_fee_jpy, start_date = excluded.start_date,"
        " updated_at = now()",
        e.contract_id, e.account_id, e.plan.value, e.monthly_fee_jpy, e.start_date)


@dataclass(frozen=True)
class PreparedRequests:
    """What the decisions of a batch's requests read, read for all of them at once: only for contracts that
    one request of the batch and nothing else in it touches (the others are read record by record)."""

    covered: frozenset[str]
    contracts: dict[str, Any]
    pending: frozenset[str]
    decided: frozenset[str]


async def prepare_requests(conn, rt: Runtime, items: list) -> PreparedRequests | None:
    requests = [e for _, e in items if isinstance(e, CancellationRequested)]
    if not requests or any(isinstance(e, WithdrawalRequested) for _, e in items):
        return None  # a withdrawal changes what is pending: the record-by-record reads keep the order
    signed = {e.contract_id for _, e in items if isinstance(e, ContractSigned)}
    per_contract = Counter(e.contract_id for e in requests)
    per_request = Counter(e.request_id for e in requests)
    # A contract one request of the batch touches, that request once, the contract not signed in it.
    single = [e for e in requests if per_contract[e.contract_id] == 1 and per_request[e.request_id] == 1
              and e.contract_id not in signed]
    if not single:
        return None
    covered, request_ids = sorted(e.contract_id for e in single), {e.request_id for e in single}
    # The contracts locked (in a fixed order), then, with a fresh snapshot after the locks, the pending
    # cancellations and the requests decided already: as the one-record path asks them.
    rows = await conn.fetch("SELECT contract_id, start_date, monthly_fee_jpy, ended_on FROM contracts"
                            " WHERE contract_id = ANY($1::text[]) ORDER BY contract_id FOR UPDATE", covered)
    seen = await conn.fetch("SELECT contract_id, request_id, status FROM cancellations"
                            " WHERE contract_id = ANY($1::text[]) OR request_id = ANY($2::text[])", covered,
                            list(request_ids))
    return PreparedRequests(
        covered=frozenset(covered), contracts={r["contract_id"]: r for r in rows},
        pending=frozenset(r["contract_id"] for r in seen if r["status"] == "accepted"),
        decided=frozenset(r["request_id"] for r in seen if r["request_id"] in request_ids))


def on_cancellation_requested(offer_policy: Mapping, holdout_percent: int = 0):
    async def handle(ctx: Context, e: CancellationRequested) -> None:
        conn = ctx.conn
        prepared: PreparedRequests | None = ctx.prepared
        if prepared is not None and e.contract_id in prepared.covered:
            row, decided = prepared.contracts.get(e.contract_id), e.request_id in prepared.decided
        else:
            # The contract, locked, and whether this request was decided already, in one round trip.
            row = await conn.fetchrow(
                "SELECT contract_id, start_date, monthly_fee_jpy, ended_on,"
                " EXISTS (SELECT 1 FROM cancellations WHERE request_id = $2) AS decided"
                " FROM contracts WHERE contract_id = $1 FOR UPDATE", e.contract_id, e.request_id)
            if row is None:
                decided = await conn.fetchval("SELECT true FROM cancellations WHERE request_id = $1", e.request_id)
            else:
                decided = row["decided"]
        if decided:
            return  # already decided (a republished request): the first decision stands
        contract = None if row is None else ContractTerms(
            contract_id=row["contract_id"], start_date=row["start_date"], monthly_fee_jpy=row["monthly_fee_jpy"],
            ended=row["ended_on"] is not None)
        # Asked after the lock, with a fresh snapshot; only a live contract can have a pending one.
        if prepared is not None and e.contract_id in prepared.covered:
            has_pending = contract is not None and not contract.ended and e.contract_id in prepared.pending
        else:
            has_pending = contract is not None and not contract.ended and bool(await conn.fetchval(
                "SELECT 1 FROM cancellations WHERE contract_id = $1 AND status = 'accepted'", e.contract_id))
        decision = decide(contract=contract, received_on=e.received_on,
                          desired_effective_date=e.desired_effective_date, has_pending=has_pending,
                          reason=e.reason, offer_policy=offer_policy)
        decision = hold_out(decision, contract_id=e.contract_id, percent=holdout_percent)
        decided_at = ctx.now()
        # Nothing reads the decision back in this batch before the next statement: deferred, so a batch's
        # decisions go as one executemany.
        if isinstance(decision, Accepted):
            ctx.defer(
                "INSERT INTO cancellations (request_id, contract_id, status, reason, received_on, effective_date,"
                " first_anniversary, offers, decided_at, holdout)"
                " VALUES ($1, $2, 'accepted', $3, $4, $5, $6, $7, $8, $9)",
                e.request_id, e.contract_id, e.reason.value, e.received_on, decision.effective_date,
                decision.first_anniversary, [o.value for o in decision.offers], decided_at, decision.holdout)
            await ctx.emit(CancellationAccepted(
                request_id=e.request_id, contract_id=e.contract_id, effective_date=decision.effective_date,
                first_anniversary=decision.first_anniversary, offers=decision.offers, received_on=e.received_on,
                reason=e.reason, decided_at=decided_at, holdout=decision.holdout), key=e.contract_id)
        else:
            ctx.defer(
                "INSERT INTO cancellations (request_id, contract_id, status, reason, received_on, codes,"
                " earliest_effective_date, decided_at) VALUES ($1, $2, 'rejected', $3, $4, $5, $6, $7)",
                e.request_id, e.contract_id, e.reason.value, e.received_on, [c.value for c in decision.codes],
                decision.earliest_effective_date, decided_at)
            await ctx.emit(CancellationRejected(
                request_id=e.request_id, contract_id=e.contract_id, codes=decision.codes,
                earliest_effective_date=decision.earliest_effective_date, reason=e.reason,
                decided_at=decided_at), key=e.contract_id)

    return handle


async def on_withdrawal_requested(ctx: Context, e: WithdrawalRequested) -> None:
    row = await ctx.conn.fetchrow(
        "SELECT c.contract_id, c.status, c.effective_date, c.offers, c.reason, c.taken_offer, k.account_id, k.plan"
        " FROM cancellations c LEFT JOIN contracts k USING (contract_id) WHERE c.request_id = $1 FOR UPDATE OF c",
        e.request_id)
    key = (row["contract_id"] if row else None) or e.contract_id or e.request_id
    decision = CannotWithdraw("unknown request") if row is None else decide_withdrawal(
        status=row["status"], effective_date=row["effective_date"], today=tokyo_date(ctx.now()),
        offers=row["offers"], taken_offer=e.taken_offer, withdrawn_with=row["taken_offer"])
    if isinstance(decision, AlreadyWithdrawn):
        return
    if isinstance(decision, CannotWithdraw):
        await ctx.emit(WithdrawalRefused(request_id=e.request_id, contract_id=key, why=decision.why), key=key)
        return
    now, offer = ctx.now(), decision.taken_offer
    await ctx.conn.execute(
        "UPDATE cancellations SET status = 'withdrawn', closed_at = $2, taken_offer = $3 WHERE request_id = $1",
        e.request_id, now, offer)
    await ctx.emit(CancellationWithdrawn(request_id=e.request_id, contract_id=key, withdrawn_at=now,
                                         taken_offer=offer), key=key)
    if offer is not None:  # in the same transaction as the withdrawal: exactly once per take
        await ctx.emit(OfferTaken(request_id=e.request_id, contract_id=key, account_id=row["account_id"],
                                  offer=offer, reason=row["reason"], plan=row["plan"], taken_at=now), key=key)


async def complete_due_cancellations(rt: Runtime) -> int:
    """Complete every accepted cancellation whose effective date has come (Tokyo), in one transaction."""
    today = tokyo_date(rt.clock.now())
    async with rt.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "UPDATE cancellations SET status = 'completed', closed_at = now() WHERE request_id IN ("
            " SELECT request_id FROM cancellations WHERE status = 'accepted' AND effective_date <= $1"
            " ORDER BY effective_date LIMIT 500 FOR UPDATE SKIP LOCKED)"
            " RETURNING request_id, contract_id, effective_date", today)
        for row in rows:
            await conn.execute("UPDATE contracts SET ended_on = $2, updated_at = now() WHERE contract_id = $1",
                               row["contract_id"], row["effective_date"])
            await emit_from(conn, rt, CancellationCompleted(
                request_id=row["request_id"], contract_id=row["contract_id"], effective_date=row["effective_date"]),
                key=row["contract_id"], correlation_id=row["request_id"])
    return len(rows)


def subscriptions(offer_policy: Mapping, holdout_percent: int = 0):
    def build(rt: Runtime) -> list[Subscription]:
        return [Subscription(
            topics=(topics.CONTRACTS, topics.REQUESTS),
            handlers={
                ContractSigned.event_type: on_contract_signed,
                CancellationRequested.event_type: on_cancellation_requested(offer_policy, holdout_percent),
                WithdrawalRequested.event_type: on_withdrawal_requested,
            },
            prepare=prepare_requests)]
    return build
