"""Asking for a withdrawal: the request marked and `cancellation.withdrawal_requested` queued, in one
transaction. The API and the customer's page both withdraw through here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.calendar import tokyo_date
from shared.events import WithdrawalRequested
from shared.outbox import add_event
from shared.vocabulary import RequestStatus

from .store import SCHEMA


@dataclass(frozen=True)
class WithdrawalAsked:
    """found=False: no such request. refused: why it cannot be withdrawn (the API's 409), else None."""

    found: bool
    status: RequestStatus | None = None
    refused: str | None = None


async def ask_withdrawal(pool: asyncpg.Pool, request_id: str, now: datetime) -> WithdrawalAsked:
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "SELECT contract_id, status, effective_date, withdrawal_requested_at FROM requests"
            " WHERE request_id = $1 FOR UPDATE", request_id)
        if row is None:
            return WithdrawalAsked(found=False)
        status = RequestStatus(row["status"])
        if row["status"] in ("completed", "rejected", "withdrawn"):
            return WithdrawalAsked(True, status, f"request is {row['status']}")
        if row["effective_date"] is not None and tokyo_date(now) >= row["effective_date"]:
            return WithdrawalAsked(True, status, "the effective date has come: the contract has ended")
        if row["withdrawal_requested_at"] is None:  # asking twice is one withdrawal
            await conn.execute("UPDATE requests SET withdrawal_requested_at = $2, updated_at = now()"
                               " WHERE request_id = $1", request_id, now)
            await add_event(conn, SCHEMA, WithdrawalRequested(
                request_id=request_id, contract_id=row["contract_id"], requested_at=now),
                key=row["contract_id"], producer="intake", correlation_id=request_id, causation_id=None)
    return WithdrawalAsked(True, status)
