"""eligibility's unit of work: its SQL (contracts, cancellations), the batch read, the writes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from shared.events import CancellationRequested, ContractSigned, WithdrawalRequested
from shared.messaging.consumer import Store

from .domain import Accepted, CancellationState, ContractTerms, Decision, contract_is_live

_UPSERT_CONTRACT = (
    "INSERT INTO contracts (contract_id, account_id, plan, monthly_fee_jpy, start_date)"
    " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (contract_id) DO UPDATE SET account_id = excluded.account_id,"
    " plan = excluded.plan, monthly_fee_jpy = excluded.monthly_fee_jpy, start_date = excluded.start_date,"
    " updated_at = now()")
# The contract, locked, and whether this request was decided already, in one round trip.
_CONTRACT_AND_DECIDED = (
    "SELECT contract_id, start_date, monthly_fee_jpy, ended_on,"
    " EXISTS (SELECT 1 FROM cancellations WHERE request_id = $2) AS decided"
    " FROM contracts WHERE contract_id = $1 FOR UPDATE")
_DECIDED = "SELECT true FROM cancellations WHERE request_id = $1"
_PENDING = "SELECT 1 FROM cancellations WHERE contract_id = $1 AND status = 'accepted'"
_CONTRACTS = ("SELECT contract_id, start_date, monthly_fee_jpy, ended_on FROM contracts"
              " WHERE contract_id = ANY($1::text[]) ORDER BY contract_id FOR UPDATE")
_SEEN = ("SELECT contract_id, request_id, status FROM cancellations"
         " WHERE contract_id = ANY($1::text[]) OR request_id = ANY($2::text[])")
_ACCEPTED = (
    "INSERT INTO cancellations (request_id, contract_id, status, reason, received_on, effective_date,"
    " first_anniversary, offers, decided_at, holdout) VALUES ($1, $2, 'accepted', $3, $4, $5, $6, $7, $8, $9)")
_REJECTED = (
    "INSERT INTO cancellations (request_id, contract_id, status, reason, received_on, codes,"
    " earliest_effective_date, decided_at) VALUES ($1, $2, 'rejected', $3, $4, $5, $6, $7)")
_CANCELLATION = ("SELECT c.contract_id, c.status, c.effective_date, c.offers, c.taken_offer, c.reason, k.account_id,"
                 " k.plan FROM cancellations c LEFT JOIN contracts k USING (contract_id) WHERE c.request_id = $1"
                 " FOR UPDATE OF c")
_WITHDRAW = "UPDATE cancellations SET status = 'withdrawn', closed_at = $2, taken_offer = $3 WHERE request_id = $1"
# By id through the primary key: `request_id IN (subquery)` was planned as a hash join over a sequential
# scan of every cancellation ever made, once a pass (pg_stat_user_tables in issue 15's soak).
_COMPLETE_DUE = (
    "UPDATE cancellations SET status = 'completed', closed_at = $3 WHERE request_id = ANY(ARRAY("
    " SELECT request_id FROM cancellations WHERE status = 'accepted' AND effective_date <= $1"
    " ORDER BY effective_date LIMIT $2 FOR UPDATE SKIP LOCKED))"
    " RETURNING request_id, contract_id, effective_date")
_END_CONTRACT = "UPDATE contracts SET ended_on = $2, updated_at = now() WHERE contract_id = $1"


@dataclass(frozen=True)
class DecisionInputs:
    """What deciding a request reads: the contract's terms, whether it was decided already, and whether
    its contract has a pending cancellation (asked after the contract's lock)."""

    contract: ContractTerms | None
    decided: bool
    has_pending: bool


@dataclass(frozen=True)
class BatchRead:
    """The decision inputs of a batch's requests, read for all of them at once: only for contracts that one
    request of the batch and nothing else in it touches (the others are read record by record)."""

    covered: frozenset[str]
    contracts: dict[str, ContractTerms]
    pending: frozenset[str]
    decided: frozenset[str]


@dataclass(frozen=True)
class Cancellation:
    request_id: str
    contract_id: str
    effective_date: date


@dataclass(frozen=True)
class Withdrawable:
    """A decided request as a withdrawal reads it: its contract, its state, and what an offer taken tells the
    contract system (the reason asked with, the account and plan)."""

    contract_id: str
    state: CancellationState
    reason: str
    account_id: str | None
    plan: str | None


def _terms(row: Any) -> ContractTerms | None:
    return None if row is None else ContractTerms(
        contract_id=row["contract_id"], start_date=row["start_date"], monthly_fee_jpy=row["monthly_fee_jpy"],
        ended=row["ended_on"] is not None)


class EligibilityStore(Store):
    batch: BatchRead | None = None

    async def preload(self, items: list) -> BatchRead | None:
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
        covered, request_ids = sorted(e.contract_id for e in single), [e.request_id for e in single]
        # The contracts locked (in a fixed order), then, with a fresh snapshot after the locks, the pending
        # cancellations and the requests decided already: as the one-record path asks them.
        rows = await self.conn.fetch(_CONTRACTS, covered)
        seen = await self.conn.fetch(_SEEN, covered, request_ids)
        self.batch = BatchRead(
            covered=frozenset(covered), contracts={r["contract_id"]: _terms(r) for r in rows},
            pending=frozenset(r["contract_id"] for r in seen if r["status"] == "accepted"),
            decided=frozenset(r["request_id"] for r in seen if r["request_id"] in set(request_ids)))
        return self.batch

    def save_contract(self, e: ContractSigned) -> None:
        self.conn.defer(_UPSERT_CONTRACT, e.contract_id, e.account_id, e.plan.value, e.monthly_fee_jpy, e.start_date)

    async def decision_inputs(self, e: CancellationRequested) -> DecisionInputs:
        batch = self.batch
        if batch is not None and e.contract_id in batch.covered:
            contract = batch.contracts.get(e.contract_id)
            return DecisionInputs(contract, e.request_id in batch.decided,
                                  contract_is_live(contract) and e.contract_id in batch.pending)
        row = await self.conn.fetchrow(_CONTRACT_AND_DECIDED, e.contract_id, e.request_id)
        decided = row["decided"] if row is not None else bool(await self.conn.fetchval(_DECIDED, e.request_id))
        contract = _terms(row)
        if decided or not contract_is_live(contract):
            return DecisionInputs(contract, decided, False)
        return DecisionInputs(contract, False, bool(await self.conn.fetchval(_PENDING, e.contract_id)))

    def save_decision(self, e: CancellationRequested, decision: Decision, decided_at: datetime) -> None:
        # Nothing reads a decision back before the next statement: deferred, a batch's as one executemany.
        if isinstance(decision, Accepted):
            self.conn.defer(_ACCEPTED, e.request_id, e.contract_id, e.reason.value, e.received_on,
                            decision.effective_date, decision.first_anniversary,
                            [o.value for o in decision.offers], decided_at, decision.holdout)
        else:
            self.conn.defer(_REJECTED, e.request_id, e.contract_id, e.reason.value, e.received_on,
                            [c.value for c in decision.codes], decision.earliest_effective_date, decided_at)

    async def cancellation(self, request_id: str) -> Withdrawable | None:
        """The request's contract and state, locked for a withdrawal; None when unknown."""
        row = await self.conn.fetchrow(_CANCELLATION, request_id)
        if row is None:
            return None
        return Withdrawable(row["contract_id"], CancellationState(row["status"], row["effective_date"],
                                                                  tuple(row["offers"]), row["taken_offer"]),
                            row["reason"], row["account_id"], row["plan"])

    async def withdraw(self, request_id: str, at: datetime, taken_offer: str | None = None) -> None:
        await self.conn.execute(_WITHDRAW, request_id, at, taken_offer)

    async def complete_due(self, through: date, at: datetime, limit: int = 500) -> list[Cancellation]:
        """Complete (and lock) up to `limit` pending cancellations effective on or before `through`; their
        contracts end on the effective date."""
        rows = await self.conn.fetch(_COMPLETE_DUE, through, limit, at)
        for row in rows:
            self.conn.defer(_END_CONTRACT, row["contract_id"], row["effective_date"])
        return [Cancellation(r["request_id"], r["contract_id"], r["effective_date"]) for r in rows]
