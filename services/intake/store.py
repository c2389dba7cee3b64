"""Recording a request: the row and its `cancellation.requested` event in one transaction."""

from __future__ import annotations

import hashlib
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from shared.contract_calendar import tokyo_date
from shared.events import CancellationForm, CancellationRequested
from shared.outbox import add_event

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
