"""intake's rules: a submission key acts once, who may still withdraw, and how a request's status moves.

Pure functions: values in, a decision out, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import date
from types import MappingProxyType

import orjson

from services.eligibility.domain import can_withdraw
from shared.vocabulary import RequestStatus

__all__ = ["ENDED", "IdempotencyConflict", "may_become", "replayed_request", "submission_digest",
           "withdrawal_refusal"]

S = RequestStatus


class IdempotencyConflict(ValueError):
    """The key was used before with a different body."""


def submission_digest(form_json: Mapping) -> str:
    """What makes two submissions under one key the same: their form, field order aside."""
    return hashlib.sha256(orjson.dumps(form_json, option=orjson.OPT_SORT_KEYS)).hexdigest()


def replayed_request(*, key_field: str, first_request_id: str, first_digest: str, digest: str) -> str:
    """The same key again: the first request stands if the body is the same, else it is an error."""
    if first_digest != digest:
        raise IdempotencyConflict(f"{key_field}: already used for request {first_request_id} with a different body")
    return first_request_id


ENDED: frozenset[RequestStatus] = frozenset({S.completed, S.rejected, S.withdrawn})


def withdrawal_refusal(status: RequestStatus, effective_date: date | None, *, today: date) -> str | None:
    """Why intake refuses to ask for a withdrawal (409), or None: an ended request, or its date has come."""
    if status in ENDED:
        return f"request is {status.value}"
    if effective_date is not None and not can_withdraw(effective_date=effective_date, today=today):
        return "the effective date has come: the contract has ended"
    return None


# Status changes only move forward: an answer never goes back to "received", an end is final.
_MAY_BECOME: Mapping[RequestStatus, frozenset[RequestStatus]] = MappingProxyType({
    S.received: frozenset(),
    S.accepted: frozenset({S.received}),
    S.rejected: frozenset({S.received}),
    S.withdrawn: frozenset({S.received, S.accepted}),
    S.completed: frozenset({S.received, S.accepted}),
})


def may_become(status: RequestStatus) -> frozenset[RequestStatus]:
    """The statuses a request may be in for it to move to `status`."""
    return _MAY_BECOME[status]
