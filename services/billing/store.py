"""billing's unit of work: its SQL (contracts, payments, settlements), the batch read, the writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from shared.events import CancellationAccepted, ContractSigned, PaymentRecorded
from shared.messaging.consumer import Store

from .domain import Settlement

# The contract's terms and its paid billing dates, in one round trip; the same for many contracts.
_TERMS = ("SELECT c.contract_id, c.start_date, c.monthly_fee_jpy,"
          " ARRAY(SELECT p.billing_date FROM payments p WHERE p.contract_id = c.contract_id) AS paid"
          " FROM contracts c WHERE c.contract_id = $1")
_TERMS_MANY = ("SELECT c.contract_id, c.start_date, c.monthly_fee_jpy,"
               " ARRAY(SELECT p.billing_date FROM payments p WHERE p.contract_id = c.contract_id) AS paid"
               " FROM contracts c WHERE c.contract_id = ANY($1::text[])")
_UPSERT_CONTRACT = ("INSERT INTO contracts (contract_id, start_date, monthly_fee_jpy) VALUES ($1, $2, $3)"
                    " ON CONFLICT (contract_id) DO UPDATE SET start_date = excluded.start_date,"
                    " monthly_fee_jpy = excluded.monthly_fee_jpy")
_AWAITING = ("SELECT request_id, received_on, effective_date FROM settlements"
             " WHERE contract_id = $1 AND status = 'awaiting_contract' FOR UPDATE")
_ISSUE_AWAITING = ("UPDATE settlements SET status = 'issued', charges = $2, total_jpy = $3, paid_through = $4,"
                   " issued_at = $5 WHERE request_id = $1")
# Keyed by billing date: the same payment recorded twice is one payment.
_PAYMENT = ("INSERT INTO payments (contract_id, billing_date, amount_jpy) VALUES ($1, $2, $3)"
            " ON CONFLICT (contract_id, billing_date) DO NOTHING")
_AWAIT_CONTRACT = ("INSERT INTO settlements (request_id, contract_id, status, received_on, effective_date)"
                   " VALUES ($1, $2, 'awaiting_contract', $3, $4) ON CONFLICT (request_id) DO NOTHING")
_ISSUE = ("INSERT INTO settlements (request_id, contract_id, status, received_on, effective_date, charges, total_jpy,"
          " paid_through, issued_at) VALUES ($1, $2, 'issued', $3, $4, $5, $6, $7, $8)"
          " ON CONFLICT (request_id) DO NOTHING RETURNING true")
_SETTLEMENT = "SELECT contract_id, status FROM settlements WHERE request_id = $1 FOR UPDATE"
_VOID = "UPDATE settlements SET status = 'voided', voided_at = $2 WHERE request_id = $1"


@dataclass(frozen=True)
class Terms:
    """What settling reads of a contract."""

    start_date: date
    monthly_fee_jpy: int
    paid_billing_dates: frozenset[date]


@dataclass(frozen=True)
class Awaiting:
    """An acceptance that came before its contract (two topics): settled when the contract arrives."""

    request_id: str
    received_on: date
    effective_date: date


@dataclass(frozen=True)
class Held:
    """A request's settlement as a withdrawal finds it."""

    contract_id: str
    status: str  # awaiting_contract, issued, voided


@dataclass(frozen=True)
class BatchRead:
    """The terms of the contracts a batch's acceptances settle, read at once; only for contracts whose
    contract events (signature, payments) are not in the same batch (those are read record by record)."""

    covered: frozenset[str]
    terms: dict[str, Terms]


def _terms(row: Any) -> Terms | None:
    return None if row is None else Terms(row["start_date"], row["monthly_fee_jpy"], frozenset(row["paid"]))


def _charges(settlement: Settlement) -> list[dict]:
    return [{"billing_date": c.billing_date.isoformat(), "amount_jpy": c.amount_jpy} for c in settlement.charges]


class BillingStore(Store):
    batch: BatchRead | None = None

    async def preload(self, items: list) -> BatchRead | None:
        changed = {e.contract_id for _, e in items if isinstance(e, (ContractSigned, PaymentRecorded))}
        covered = sorted({e.contract_id for _, e in items if isinstance(e, CancellationAccepted) and e.contract_id
                          and e.contract_id not in changed})
        if not covered:
            return None
        rows = await self.conn.fetch(_TERMS_MANY, covered)
        self.batch = BatchRead(frozenset(covered), {r["contract_id"]: _terms(r) for r in rows})
        return self.batch

    async def terms(self, contract_id: str) -> Terms | None:
        if self.batch is not None and contract_id in self.batch.covered:
            return self.batch.terms.get(contract_id)
        return _terms(await self.conn.fetchrow(_TERMS, contract_id))

    def save_contract(self, e: ContractSigned) -> None:
        self.conn.defer(_UPSERT_CONTRACT, e.contract_id, e.start_date, e.monthly_fee_jpy)

    def save_payment(self, e: PaymentRecorded) -> None:
        self.conn.defer(_PAYMENT, e.contract_id, e.billing_date, e.amount_jpy)

    async def awaiting(self, contract_id: str) -> list[Awaiting]:
        rows = await self.conn.fetch(_AWAITING, contract_id)
        return [Awaiting(r["request_id"], r["received_on"], r["effective_date"]) for r in rows]

    async def await_contract(self, e: CancellationAccepted) -> None:
        await self.conn.execute(_AWAIT_CONTRACT, e.request_id, e.contract_id, e.received_on, e.effective_date)

    async def issue(self, request_id: str, contract_id: str, received_on: date, effective_date: date,
                    settlement: Settlement, at: datetime) -> bool:
        """Record the settlement; False if the request has one already (one settlement per request)."""
        return bool(await self.conn.fetchval(
            _ISSUE, request_id, contract_id, received_on, effective_date, _charges(settlement),
            settlement.total_jpy, settlement.paid_through, at))

    async def issue_awaiting(self, awaiting: Awaiting, settlement: Settlement, at: datetime) -> None:
        await self.conn.execute(_ISSUE_AWAITING, awaiting.request_id, _charges(settlement), settlement.total_jpy,
                                settlement.paid_through, at)

    async def settlement(self, request_id: str) -> Held | None:
        """The request's settlement, locked; None if billing never settled it."""
        row = await self.conn.fetchrow(_SETTLEMENT, request_id)
        return None if row is None else Held(row["contract_id"], row["status"])

    def void(self, request_id: str, at: datetime) -> None:
        self.conn.defer(_VOID, request_id, at)
