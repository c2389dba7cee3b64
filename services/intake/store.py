"""Recording a request: the row and its `cancellation.requested` event in one transaction."""

from __future__ import annotations

import hashlib
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from shared.calendar import tokyo_date
from shared.events import CancellationForm, CancellationRequested, WithdrawalRequested
from shared.outbox import add_event

from .domain import AskWithdrawal, WithdrawalAnswer, answer_withdrawal

SCHEMA = "intake"


class IdempotencyConflict(ValueError):
    """The key was used before with a different body."""


def body_hash_of(form_json: dict) -> str:
    return hashlib.sha256(orjson.dumps(form_json, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True)
class Recorded:
    request_id: str
    created: bool


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
    def received_on(self):
        return tokyo_date(self.received_at)

    def row(self) -> tuple:
        return (self.request_id, self.form.contract_id, self.source, self.submission_id, self.digest, self.form_json,
                self.received_at, self.received_on, self.form.reason.value)


def new_request(form: CancellationForm, *, source: str, submission_id: str | None, received_at: datetime) -> NewRequest:
    form_json = form.model_dump(mode="json")
    return NewRequest(str(uuid.uuid4()), form, form_json, body_hash_of(form_json), source, submission_id, received_at)


_INSERT = ("INSERT INTO requests (request_id, contract_id, source, submission_id, body_hash, form, received_at,"
           " received_on, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
           " ON CONFLICT (source, submission_id) DO NOTHING RETURNING request_id")
_INSERT_MANY = ("INSERT INTO requests (request_id, contract_id, source, submission_id, body_hash, form, received_at,"
                " received_on, reason)"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[],"
                " $7::timestamptz[], $8::date[], $9::text[])"
                " ON CONFLICT (source, submission_id) DO NOTHING RETURNING request_id")


async def insert_requests(conn: asyncpg.Connection, requests: list[NewRequest]) -> set[str]:
    """Insert many in one statement; the request ids actually created (the others' keys were used before,
    or earlier in the same list)."""
    if not requests:
        return set()
    rows = await conn.fetch(_INSERT_MANY, *(list(c) for c in zip(*(r.row() for r in requests))))
    return {row["request_id"] for row in rows}


async def existing_request(conn: asyncpg.Connection, new: NewRequest) -> Recorded:
    """The request recorded earlier under the same key; IdempotencyConflict if its body differed."""
    existing = await conn.fetchrow(
        "SELECT request_id, body_hash FROM requests WHERE source = $1 AND submission_id = $2",
        new.source, new.submission_id)
    if existing["body_hash"] != new.digest:
        field = "Idempotency-Key" if new.source == "http" else "submission_id"
        raise IdempotencyConflict(f"{field}: already used for request {existing['request_id']} "
                                  "with a different body")
    return Recorded(existing["request_id"], created=False)


async def queue_requested(conn: asyncpg.Connection, new: NewRequest, *, correlation_id: str | None,
                          causation_id: str | None) -> None:
    event = CancellationRequested(
        **new.form_json, request_id=new.request_id, source=new.source, submission_id=new.submission_id,
        received_at=new.received_at, received_on=new.received_on)
    await add_event(conn, SCHEMA, event, key=new.form.contract_id, producer="intake",
                    correlation_id=correlation_id or new.request_id, causation_id=causation_id)


async def record_request(conn: asyncpg.Connection, form: CancellationForm, *, source: str,
                         submission_id: str | None, received_at: datetime,
                         correlation_id: str | None = None, causation_id: str | None = None) -> Recorded:
    """Insert the request and queue `cancellation.requested`; a repeated key returns the first request."""
    new = new_request(form, source=source, submission_id=submission_id, received_at=received_at)
    # Its own transaction from the HTTP API; inside the consumer's batch transaction no savepoint is needed:
    # nothing is written before the checks that can fail.
    async with (nullcontext() if conn.is_in_transaction() else conn.transaction()):
        if await conn.fetchval(_INSERT, *new.row()) is None:
            return await existing_request(conn, new)
        await queue_requested(conn, new, correlation_id=correlation_id, causation_id=causation_id)
    return Recorded(new.request_id, created=True)


# --- withdrawals, with or without an offer taken (SPEC sections 2 and 6) ------------------------------------

@dataclass(frozen=True)
class WithdrawalOutcome:
    status: str  # the request's status when it was asked
    answer: WithdrawalAnswer


async def ask_withdrawal(conn: asyncpg.Connection, request_id: str, *, taken_offer: str | None, now: datetime,
                         correlation_id: str | None = None,
                         causation_id: str | None = None) -> WithdrawalOutcome | None:
    """Decide on a withdrawal of `request_id` (None if there is no such request); when it is to be asked,
    mark the request and queue `cancellation.withdrawal_requested` in the same transaction."""
    async with (nullcontext() if conn.is_in_transaction() else conn.transaction()):
        row = await conn.fetchrow(
            "SELECT contract_id, status, effective_date, offers, withdrawal_requested_at, withdrawal_offer"
            " FROM requests WHERE request_id = $1 FOR UPDATE", request_id)
        if row is None:
            return None
        answer = answer_withdrawal(
            status=row["status"], effective_date=row["effective_date"], today=tokyo_date(now), offers=row["offers"],
            asked=row["withdrawal_requested_at"] is not None, asked_with=row["withdrawal_offer"],
            taken_offer=taken_offer)
        if isinstance(answer, AskWithdrawal):
            await conn.execute("UPDATE requests SET withdrawal_requested_at = $2, withdrawal_offer = $3,"
                               " updated_at = now() WHERE request_id = $1", request_id, now, answer.taken_offer)
            await add_event(conn, SCHEMA, WithdrawalRequested(
                request_id=request_id, contract_id=row["contract_id"], requested_at=now,
                taken_offer=answer.taken_offer), key=row["contract_id"], producer="intake",
                correlation_id=correlation_id or request_id, causation_id=causation_id)
    return WithdrawalOutcome(row["status"], answer)


async def record_withdrawal_submission(conn: asyncpg.Connection, submission_id: str, request_id: str,
                                       taken_offer: str | None) -> bool:
    """Whether this submission_id is new (it then acts); IdempotencyConflict if it was used before for
    another request or another offer."""
    if await conn.fetchval("INSERT INTO withdrawal_submissions (submission_id, request_id, taken_offer)"
                           " VALUES ($1, $2, $3) ON CONFLICT (submission_id) DO NOTHING RETURNING true",
                           submission_id, request_id, taken_offer):
        return True
    before = await conn.fetchrow("SELECT request_id, taken_offer FROM withdrawal_submissions"
                                 " WHERE submission_id = $1", submission_id)
    if (before["request_id"], before["taken_offer"]) != (request_id, taken_offer):
        raise IdempotencyConflict(f"submission_id: already used for a withdrawal of request {before['request_id']}"
                                  f" with offer {before['taken_offer'] or 'none'}")
    return False
