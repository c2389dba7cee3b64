"""billing's handlers: the payment ledger and the final settlement of each accepted cancellation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared import topics
from shared.consumer import Context
from shared.events import (CancellationAccepted, CancellationWithdrawn, ChargeLine, ContractSigned,
                           PaymentRecorded, SettlementIssued, SettlementVoided)
from shared.service import Runtime, Subscription

from .domain import settle


# The contract's terms and its paid billing dates, in one round trip.
TERMS = ("SELECT c.start_date, c.monthly_fee_jpy,"
         " ARRAY(SELECT p.billing_date FROM payments p WHERE p.contract_id = c.contract_id) AS paid"
         " FROM contracts c WHERE c.contract_id = $1")


async def on_contract_signed(ctx: Context, e: ContractSigned) -> None:
    await ctx.conn.execute(
        "INSERT INTO contracts (contract_id, start_date, monthly_fee_jpy) VALUES ($1, $2, $3)"
        " ON CONFLICT (contract_id) DO UPDATE SET start_date = excluded.start_date,"
        " monthly_fee_jpy = excluded.monthly_fee_jpy", e.contract_id, e.start_date, e.monthly_fee_jpy)
    awaiting = await ctx.conn.fetch(
        "SELECT request_id, received_on, effective_date FROM settlements"
        " WHERE contract_id = $1 AND status = 'awaiting_contract' FOR UPDATE", e.contract_id)
    if awaiting:
        terms = await ctx.conn.fetchrow(TERMS, e.contract_id)
        for row in awaiting:
            charges, settlement = _settle(terms, row["received_on"], row["effective_date"])
            await ctx.conn.execute(
                "UPDATE settlements SET status = 'issued', charges = $2, total_jpy = $3, paid_through = $4,"
                " issued_at = $5 WHERE request_id = $1", row["request_id"], [c.model_dump(mode="json") for c in charges],
                settlement.total_jpy, settlement.paid_through, ctx.now())
            await _announce(ctx, row["request_id"], e.contract_id, charges, settlement)


async def on_payment_recorded(ctx: Context, e: PaymentRecorded) -> None:
    # Keyed by billing date: the same payment recorded twice is one payment.
    ctx.defer(
        "INSERT INTO payments (contract_id, billing_date, amount_jpy) VALUES ($1, $2, $3)"
        " ON CONFLICT (contract_id, billing_date) DO NOTHING", e.contract_id, e.billing_date, e.amount_jpy)


# The same, for many contracts at once.
TERMS_MANY = ("SELECT c.contract_id, c.start_date, c.monthly_fee_jpy,"
              " ARRAY(SELECT p.billing_date FROM payments p WHERE p.contract_id = c.contract_id) AS paid"
              " FROM contracts c WHERE c.contract_id = ANY($1::text[])")


@dataclass(frozen=True)
class PreparedTerms:
    """The terms of the contracts a batch's acceptances settle, read at once; only for contracts whose
    contract events (signature, payments) are not in the same batch (those are read record by record)."""

    covered: frozenset[str]
    terms: dict[str, Any]


async def prepare_terms(conn, rt: Runtime, items: list) -> PreparedTerms | None:
    changed = {e.contract_id for _, e in items if isinstance(e, (ContractSigned, PaymentRecorded))}
    covered = sorted({e.contract_id for _, e in items if isinstance(e, CancellationAccepted) and e.contract_id
                      and e.contract_id not in changed})
    if not covered:
        return None
    rows = await conn.fetch(TERMS_MANY, covered)
    return PreparedTerms(frozenset(covered), {r["contract_id"]: r for r in rows})


async def on_accepted(ctx: Context, e: CancellationAccepted) -> None:
    if e.received_on is None:
        raise ValueError("data.received_on: billing needs the received-on date to settle")
    prepared: PreparedTerms | None = ctx.prepared
    if prepared is not None and e.contract_id in prepared.covered:
        terms = prepared.terms.get(e.contract_id)
    else:
        terms = await ctx.conn.fetchrow(TERMS, e.contract_id)
    if terms is None:
        # The acceptance came before the contract (two topics): settled when the contract arrives.
        await ctx.conn.execute(
            "INSERT INTO settlements (request_id, contract_id, status, received_on, effective_date)"
            " VALUES ($1, $2, 'awaiting_contract', $3, $4) ON CONFLICT (request_id) DO NOTHING",
            e.request_id, e.contract_id, e.received_on, e.effective_date)
        return
    charges, settlement = _settle(terms, e.received_on, e.effective_date)
    inserted = await ctx.conn.fetchval(
        "INSERT INTO settlements (request_id, contract_id, status, received_on, effective_date, charges, total_jpy,"
        " paid_through, issued_at) VALUES ($1, $2, 'issued', $3, $4, $5, $6, $7, $8)"
        " ON CONFLICT (request_id) DO NOTHING RETURNING true",
        e.request_id, e.contract_id, e.received_on, e.effective_date, [c.model_dump(mode="json") for c in charges],
        settlement.total_jpy, settlement.paid_through, ctx.now())
    if inserted:  # one settlement per request: a second acceptance of it changes nothing
        await _announce(ctx, e.request_id, e.contract_id, charges, settlement)


def _settle(terms, received_on, effective_date):
    settlement = settle(start_date=terms["start_date"], monthly_fee_jpy=terms["monthly_fee_jpy"],
                        received_on=received_on, effective_date=effective_date,
                        paid_billing_dates=frozenset(terms["paid"]))
    charges = tuple(ChargeLine(billing_date=c.billing_date, amount_jpy=c.amount_jpy) for c in settlement.charges)
    return charges, settlement


async def _announce(ctx: Context, request_id: str, contract_id: str, charges, settlement) -> None:
    await ctx.emit(SettlementIssued(
        request_id=request_id, contract_id=contract_id, charges=charges, total_jpy=settlement.total_jpy,
        refund_jpy=settlement.refund_jpy, paid_through=settlement.paid_through), key=contract_id)


async def on_withdrawn(ctx: Context, e: CancellationWithdrawn) -> None:
    row = await ctx.conn.fetchrow(
        "UPDATE settlements SET status = 'voided', voided_at = $2 WHERE request_id = $1 AND status <> 'voided'"
        " RETURNING contract_id, issued_at", e.request_id, ctx.now())
    if row is not None and row["issued_at"] is not None:
        await ctx.emit(SettlementVoided(request_id=e.request_id, contract_id=row["contract_id"]),
                       key=row["contract_id"])


def subscriptions(rt: Runtime) -> list[Subscription]:
    return [Subscription(
        topics=(topics.CONTRACTS, topics.DECISIONS),
        handlers={
            ContractSigned.event_type: on_contract_signed,
            PaymentRecorded.event_type: on_payment_recorded,
            CancellationAccepted.event_type: on_accepted,
            CancellationWithdrawn.event_type: on_withdrawn,
        },
        prepare=prepare_terms)]
