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
from shared.events import CancellationForm, CancellationRequested
from shared.outbox import add_event

SCHEMA = "intake"


class IdempotencyConflict(ValueError):
    """The key was used before with a different body."""


def body_hash(form: CancellationForm) -> str:
    canonical = orjson.dumps(form.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class Recorded:
    request_id: str
    created: bool


async def record_request(conn: asyncpg.Connection, form: CancellationForm, *, source: str,
                         submission_id: str | None, received_at: datetime,
                         correlation_id: str | None = None, causation_id: str | None = None) -> Recorded:
    """Insert the request and queue `cancellation.requested`; a repeated key returns the first request."""
    digest = body_hash(form)
    request_id = str(uuid.uuid4())
    received_on = tokyo_date(received_at)
    form_json = form.model_dump(mode="json")
    # Its own transaction from the HTTP API; inside the consumer's batch transaction no savepoint is needed:
    # nothing is written before the checks that can fail.
    async with (nullcontext() if conn.is_in_transaction() else conn.transaction()):
        inserted = await conn.fetchval(
            "INSERT INTO requests (request_id, contract_id, source, submission_id, body_hash, form, received_at,"
            " received_on, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (source, submission_id) DO NOTHING RETURNING request_id",
            request_id, form.contract_id, source, submission_id, digest, form_json, received_at, received_on,
            form.reason.value)
        if inserted is None:
            existing = await conn.fetchrow(
                "SELECT request_id, body_hash FROM requests WHERE source = $1 AND submission_id = $2",
                source, submission_id)
            if existing["body_hash"] != digest:
                field = "Idempotency-Key" if source == "http" else "submission_id"
                raise IdempotencyConflict(f"{field}: already used for request {existing['request_id']} "
                                          "with a different body")
            return Recorded(existing["request_id"], created=False)
        event = CancellationRequested(
            **form_json, request_id=request_id, source=source, submission_id=submission_id,
            received_at=received_at, received_on=received_on)
        await add_event(conn, SCHEMA, event, key=form.contract_id, producer="intake",
                        correlation_id=correlation_id or request_id, causation_id=causation_id)
    return Recorded(request_id, created=True)
