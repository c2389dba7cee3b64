"""intake's unit of work: its SQL (requests and their status view), the batch insert, the writes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from shared.clock import Clock
from shared.contract_calendar import tokyo_date
from services.eligibility.domain import ContractTerms
from shared.events import (CancellationAccepted, CancellationForm, CancellationRejected, CancellationRequested,
                           CancellationSubmitted, ContractSigned, Customer, NotificationSent, PaymentRecorded,
                           SettlementIssued)
from shared.messaging.consumer import Store
from shared.request_lifecycle import may_move_from
from shared.sealing import DataKey, new_key, seal
from shared.vocabulary import RequestStatus

from .domain import IdempotencyConflict, replayed_request, submission_digest


@dataclass(frozen=True)
class NewRequest:
    """A request about to be recorded: its row's values, and what its event is made of."""

    request_id: str
    form: CancellationForm
    form_json: dict
    digest: str
    source: str
    submission_id: str | None
    received_at: datetime

    @property
    def received_on(self) -> date:
        return tokyo_date(self.received_at)

    def row(self) -> tuple:
        # The digest covers the whole form (a replay with another e-mail is a conflict); the row keeps no
        # customer: intake does not need it, the event carries it sealed.
        kept = {k: v for k, v in self.form_json.items() if k != "customer"}
        return (self.request_id, self.form.contract_id, self.source, self.submission_id, self.digest, kept,
                self.received_at, self.received_on, self.form.reason.value)

    def requested(self, key: DataKey) -> CancellationRequested:
        """The event, the customer sealed with the contract's data key."""
        fields = {k: v for k, v in self.form_json.items() if k != "customer"}
        return CancellationRequested(
            **fields, customer_sealed=seal(self.form.customer, key), request_id=self.request_id, source=self.source,
            submission_id=self.submission_id, received_at=self.received_at, received_on=self.received_on)


@dataclass(frozen=True)
class Recorded:
    request_id: str
    created: bool
    new: NewRequest


def new_request(form: CancellationForm, *, source: str, submission_id: str | None, received_at: datetime) -> NewRequest:
    form_json = form.model_dump(mode="json")
    return NewRequest(str(uuid.uuid4()), form, form_json, submission_digest(form_json), source, submission_id,
                      received_at)


def form_of(e: CancellationSubmitted) -> CancellationForm:
    return CancellationForm.model_validate(e.model_dump(exclude={"submission_id"}))


@dataclass(frozen=True)
class WithdrawalState:
    contract_id: str
    status: RequestStatus
    effective_date: date | None
    withdrawal_requested_at: datetime | None
    offers: tuple[str, ...] = ()
    withdrawal_offer: str | None = None  # the offer the withdrawal was asked for

    def facts(self) -> dict[str, Any]:
        """What `domain.answer_withdrawal` decides on, besides today and the offer taken."""
        return {"status": self.status, "effective_date": self.effective_date, "offers": self.offers,
                "asked": self.withdrawal_requested_at is not None, "asked_with": self.withdrawal_offer}


_INSERT = ("INSERT INTO requests (request_id, contract_id, source, submission_id, body_hash, form, received_at,"
           " received_on, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
           " ON CONFLICT (source, submission_id) DO NOTHING RETURNING request_id")
_INSERT_MANY = ("INSERT INTO requests (request_id, contract_id, source, submission_id, body_hash, form, received_at,"
                " received_on, reason)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],"
                " $7::timestamptz[], $8::date[], $9::text[])"
                " ON CONFLICT (source, submission_id) DO NOTHING RETURNING request_id")
_EXISTING = "SELECT request_id, body_hash FROM requests WHERE source = $1 AND submission_id = $2"
_FOR_WITHDRAWAL = ("SELECT contract_id, status, effective_date, withdrawal_requested_at, offers, withdrawal_offer"
                   " FROM requests WHERE request_id = $1 FOR UPDATE")
_WITHDRAWAL_REQUESTED = ("UPDATE requests SET withdrawal_requested_at = $2, withdrawal_offer = $3, updated_at = now()"
                         " WHERE request_id = $1")
_WITHDRAWAL_SUBMISSION = ("INSERT INTO withdrawal_submissions (submission_id, request_id, taken_offer)"
                          " VALUES ($1, $2, $3) ON CONFLICT (submission_id) DO NOTHING RETURNING true")
_WITHDRAWAL_SUBMITTED_BEFORE = "SELECT request_id, taken_offer FROM withdrawal_submissions WHERE submission_id = $1"
_WITHDRAWN = ("UPDATE requests SET status = 'withdrawn', taken_offer = $2, updated_at = now()"
              " WHERE request_id = $1 AND status = ANY($3::text[])")
_VIEW = "SELECT * FROM requests WHERE request_id = $1"
_VIEW_BY_SUBMISSION = "SELECT * FROM requests WHERE submission_id = $1 ORDER BY source = 'kafka' DESC LIMIT 1"

# The status view: written, never read, by the consumer: every write is deferred, so a batch's updates go
# in a few executemany round trips, in order. Each status change names the statuses it may move from.
_ACCEPTED = ("UPDATE requests SET status = 'accepted', effective_date = $2, first_anniversary = $3, offers = $4,"
             " first_answer_at = coalesce(first_answer_at, $5), updated_at = now()"
             " WHERE request_id = $1 AND status = ANY($6::text[])")
_REJECTED = ("UPDATE requests SET status = 'rejected', codes = $2, earliest_effective_date = $3,"
             " first_answer_at = coalesce(first_answer_at, $4), updated_at = now()"
             " WHERE request_id = $1 AND status = ANY($5::text[])")
_STATUS = "UPDATE requests SET status = $2, updated_at = now() WHERE request_id = $1 AND status = ANY($3::text[])"
_REFUSED = "UPDATE requests SET withdrawal_refused = $2, updated_at = now() WHERE request_id = $1"
_SETTLEMENT = "UPDATE requests SET settlement = $2, updated_at = now() WHERE request_id = $1"
_SETTLEMENT_VOIDED = (
    "UPDATE requests SET settlement = coalesce(settlement, '{}'::jsonb) || '{\"status\": \"voided\"}'::jsonb,"
    " updated_at = now() WHERE request_id = $1")
_NOTIFICATION = ("UPDATE requests SET notifications = notifications || $2::jsonb, updated_at = now()"
                 " WHERE request_id = $1")


# What the domain allows each status to move from, as the statements' parameter (computed once).
_MAY_MOVE_FROM = may_move_from()


# Personal data: one data key per contract; after an erasure a new one only for new data.
_KEY = "SELECT key_id, key FROM subject_keys WHERE contract_id = $1 AND key IS NOT NULL"
_KEYS = ("SELECT contract_id, key_id, key FROM subject_keys WHERE contract_id = ANY($1::text[])"
         " AND key IS NOT NULL")
# One round trip: a key made for the contracts without one (new, or erased), the others' read in the same
# statement (its snapshot does not see `made`'s rows). A contract whose key another transaction committed
# after the snapshot is in neither half: the caller reads those with `_KEYS`.
_DATA_KEYS = (
    "WITH made AS (INSERT INTO subject_keys (contract_id, key_id, key)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) ON CONFLICT (contract_id)"
    " DO UPDATE SET key_id = excluded.key_id, key = excluded.key WHERE subject_keys.key IS NULL"
    " RETURNING contract_id, key_id, key)"
    " SELECT contract_id, key_id, key FROM made UNION ALL"
    " SELECT contract_id, key_id, key FROM subject_keys WHERE contract_id = ANY($1::text[]) AND key IS NOT NULL")
_ERASE = (
    "INSERT INTO subject_keys (contract_id, erased_at) VALUES ($1, $2) ON CONFLICT (contract_id)"
    " DO UPDATE SET key_id = NULL, key = NULL, erased_at = excluded.erased_at",
    "UPDATE contracts SET customer = NULL, erased_at = $2 WHERE contract_id = $1",
    "UPDATE requests SET form = form - 'customer', erased_at = $2 WHERE contract_id = $1",
)

# The contracts (contracts.events), for the quote and the cancel page.
_CONTRACT_SIGNED = (
    "INSERT INTO contracts (contract_id, account_id, plan, monthly_fee_jpy, start_date, customer)"
    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (contract_id) DO UPDATE SET account_id = excluded.account_id,"
    " plan = excluded.plan, monthly_fee_jpy = excluded.monthly_fee_jpy, start_date = excluded.start_date,"
    " customer = coalesce(excluded.customer, contracts.customer), updated_at = now()")
# Keyed by billing date, as billing keys them: the same payment recorded twice is one payment.
_PAYMENT = "INSERT INTO payments (contract_id, billing_date) VALUES ($1, $2) ON CONFLICT DO NOTHING"
# Pending: an accepted cancellation not withdrawn nor completed; ended: one completed (the status view).
_CONTRACT_STATE = (
    "SELECT c.*, ARRAY(SELECT p.billing_date FROM payments p WHERE p.contract_id = c.contract_id) AS paid,"
    " (SELECT r.request_id FROM requests r WHERE r.contract_id = c.contract_id AND r.status = 'accepted'"
    " LIMIT 1) AS pending,"
    " EXISTS (SELECT 1 FROM requests r WHERE r.contract_id = c.contract_id AND r.status = 'completed') AS ended"
    " FROM contracts c WHERE c.contract_id = $1")


@dataclass(frozen=True)
class ContractState:
    """A contract as the quote sees it: its terms, its paid billing dates, and its pending cancellation."""

    terms: ContractTerms
    account_id: str
    plan: str
    customer: Customer | None
    paid_billing_dates: frozenset[date]
    pending_request_id: str | None

    @property
    def has_pending(self) -> bool:
        return self.pending_request_id is not None


def _from(status: RequestStatus) -> list[str]:
    return _MAY_MOVE_FROM[status]


class IntakeStore(Store):
    clock: Clock | None = None
    batch: dict[uuid.UUID, tuple[NewRequest, bool]] | None = None
    keys: dict[str, DataKey] | None = None  # the batch's data keys, read (or made) at once

    async def preload(self, items: list) -> dict | None:
        """The batch's submissions inserted with one statement: {event_id: (NewRequest, created)}."""
        news = {envelope.event_id: new_request(form_of(e), source="kafka", submission_id=e.submission_id,
                                               received_at=self.clock.now())
                for envelope, e in items if isinstance(e, CancellationSubmitted)}
        if not news:
            return None
        rows = await self.conn.fetch(_INSERT_MANY, *(list(c) for c in zip(*(n.row() for n in news.values()))))
        created = {row["request_id"] for row in rows}
        self.batch = {event_id: (new, new.request_id in created) for event_id, new in news.items()}
        wanted = sorted({n.form.contract_id for n in news.values() if n.request_id in created})
        self.keys = await self._data_keys(wanted) if wanted else None
        return self.batch

    async def record_submission(self, event_id: uuid.UUID, e: CancellationSubmitted, now: datetime) -> Recorded:
        if self.batch is not None and event_id in self.batch:
            new, created = self.batch[event_id]
            return Recorded(new.request_id, True, new) if created else await self._replayed(new)
        return await self.record(new_request(form_of(e), source="kafka", submission_id=e.submission_id,
                                             received_at=now))

    async def record(self, new: NewRequest) -> Recorded:
        """Insert the request; a key used before gives the first request (IdempotencyConflict if its body
        differed). Nothing is written before that check, so no savepoint is needed."""
        if await self.conn.fetchval(_INSERT, *new.row()) is None:
            return await self._replayed(new)
        return Recorded(new.request_id, True, new)

    async def _replayed(self, new: NewRequest) -> Recorded:
        first = await self.conn.fetchrow(_EXISTING, new.source, new.submission_id)
        request_id = replayed_request(key_field="Idempotency-Key" if new.source == "http" else "submission_id",
                                      first_request_id=first["request_id"], first_digest=first["body_hash"],
                                      digest=new.digest)
        return Recorded(request_id, False, new)

    async def for_withdrawal(self, request_id: str) -> WithdrawalState | None:
        row = await self.conn.fetchrow(_FOR_WITHDRAWAL, request_id)
        return None if row is None else WithdrawalState(
            row["contract_id"], RequestStatus(row["status"]), row["effective_date"], row["withdrawal_requested_at"],
            tuple(row["offers"]), row["withdrawal_offer"])

    async def withdrawal_requested(self, request_id: str, at: datetime, taken_offer: str | None = None) -> None:
        await self.conn.execute(_WITHDRAWAL_REQUESTED, request_id, at, taken_offer)

    async def withdrawal_submission(self, submission_id: str, request_id: str, taken_offer: str | None) -> bool:
        """Whether this upstream withdrawal's submission_id is new (it then acts); IdempotencyConflict if it
        was used before for another request or another offer."""
        if await self.conn.fetchval(_WITHDRAWAL_SUBMISSION, submission_id, request_id, taken_offer):
            return True
        before = await self.conn.fetchrow(_WITHDRAWAL_SUBMITTED_BEFORE, submission_id)
        if (before["request_id"], before["taken_offer"]) != (request_id, taken_offer):
            raise IdempotencyConflict(f"submission_id: already used for a withdrawal of request "
                                      f"{before['request_id']} with offer {before['taken_offer'] or 'none'}")
        return False

    # --- the status view ---------------------------------------------------------------------------
    def accepted(self, e: CancellationAccepted, answered_at: datetime) -> None:
        self.conn.defer(_ACCEPTED, e.request_id, e.effective_date, e.first_anniversary, [o.value for o in e.offers],
                        answered_at, _from(RequestStatus.accepted))

    def rejected(self, e: CancellationRejected, answered_at: datetime) -> None:
        self.conn.defer(_REJECTED, e.request_id, [c.value for c in e.codes], e.earliest_effective_date, answered_at,
                        _from(RequestStatus.rejected))

    def moved(self, request_id: str, status: RequestStatus) -> None:
        self.conn.defer(_STATUS, request_id, status.value, _from(status))

    def withdrawn(self, request_id: str, taken_offer: str | None) -> None:
        self.conn.defer(_WITHDRAWN, request_id, taken_offer, _from(RequestStatus.withdrawn))

    def withdrawal_refused(self, request_id: str, why: str) -> None:
        self.conn.defer(_REFUSED, request_id, why)

    def settlement_issued(self, e: SettlementIssued) -> None:
        settlement = e.model_dump(mode="json", exclude={"request_id", "contract_id"}) | {"status": "issued"}
        self.conn.defer(_SETTLEMENT, e.request_id, settlement)

    def settlement_voided(self, request_id: str) -> None:
        self.conn.defer(_SETTLEMENT_VOIDED, request_id)

    def notification_sent(self, e: NotificationSent) -> None:
        self.conn.defer(_NOTIFICATION, e.request_id, [e.model_dump(mode="json", exclude={"request_id"})])
    # --- the contracts ------------------------------------------------------------------------------
    def contract_signed(self, e: ContractSigned) -> None:
        self.conn.defer(_CONTRACT_SIGNED, e.contract_id, e.account_id, e.plan.value, e.monthly_fee_jpy, e.start_date,
                        e.customer.model_dump(mode="json") if e.customer else None)

    def payment_recorded(self, e: PaymentRecorded) -> None:
        self.conn.defer(_PAYMENT, e.contract_id, e.billing_date)

    # --- personal data ------------------------------------------------------------------------------
    async def data_key(self, contract_id: str) -> DataKey:
        """The contract's data key, made the first time (and again after an erasure, for new data)."""
        if self.keys is not None and contract_id in self.keys:
            return self.keys[contract_id]
        return (await self._data_keys([contract_id]))[contract_id]

    async def _data_keys(self, contract_ids: list[str]) -> dict[str, DataKey]:
        """The contracts' data keys, made for those that have none (yet, or any more): one statement."""
        rows = list(await self.conn.fetch(_DATA_KEYS, contract_ids, [str(uuid.uuid4()) for _ in contract_ids],
                                          [new_key() for _ in contract_ids]))
        if missing := sorted(set(contract_ids) - {r["contract_id"] for r in rows}):
            rows += await self.conn.fetch(_KEYS, missing)
        return {r["contract_id"]: DataKey(r["contract_id"], r["key_id"], bytes(r["key"])) for r in rows}

    def erase(self, contract_id: str, at: datetime) -> None:
        """The contract's key deleted and its customer gone from intake's rows (ids, dates and amounts stay)."""
        if self.keys is not None:
            self.keys.pop(contract_id, None)
        for statement in _ERASE:
            self.conn.defer(statement, contract_id, at)



async def request_view(pool: asyncpg.Pool, request_id: str) -> Any:
    return await pool.fetchrow(_VIEW, request_id)


async def request_view_by_submission(pool: asyncpg.Pool, submission_id: str) -> Any:
    return await pool.fetchrow(_VIEW_BY_SUBMISSION, submission_id)


async def contract_state(pool: asyncpg.Pool, contract_id: str) -> ContractState | None:
    row = await pool.fetchrow(_CONTRACT_STATE, contract_id)
    if row is None:
        return None
    ended = row["ended"]
    return ContractState(
        terms=ContractTerms(contract_id=row["contract_id"], start_date=row["start_date"],
                            monthly_fee_jpy=row["monthly_fee_jpy"], ended=ended),
        account_id=row["account_id"], plan=row["plan"],
        customer=Customer.model_validate(row["customer"]) if row["customer"] else None,
        paid_billing_dates=frozenset(row["paid"]), pending_request_id=None if ended else row["pending"])


async def request_of_contract(pool: asyncpg.Pool, request_id: str, contract_id: str) -> Any:
    """The request's status view, if it is one of the contract's (the cancel page shows only its own)."""
    return await pool.fetchrow("SELECT * FROM requests WHERE request_id = $1 AND contract_id = $2",
                               request_id, contract_id)


async def first_use_of_signature(pool: asyncpg.Pool, digest: str, expires_at: datetime, now: datetime) -> bool:
    """Record a signed call's digest until `expires_at`; False if it was recorded before (a replay). Expired
    rows go as new ones come."""
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM seen_signatures WHERE expires_at < $1", now)
        return bool(await conn.fetchval(
            "INSERT INTO seen_signatures (digest, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
            digest, expires_at))
