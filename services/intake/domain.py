"""intake's rules: a submission key acts once, who may still withdraw (asking twice is one withdrawal),
how a request's status moves, and the quote (SPEC section 7: eligibility's decision and billing's settlement,
their own functions, for a contract as it stands on a received-on date).

Pure functions: values in, a decision out, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from types import MappingProxyType

import orjson

from services.billing.domain import Settlement, settle
from services.eligibility.domain import (DEFAULT_OFFER_POLICY, ContractTerms, OfferPolicy, Rejected, can_withdraw,
                                         decide, earliest_effective_date)
from shared.contract_calendar import first_anniversary
from shared.vocabulary import Offer, Reason, RejectionCode, RequestStatus

__all__ = ["ENDED", "AskWithdrawal", "AskedBefore", "IdempotencyConflict", "Quote", "RefuseWithdrawal",
           "WithdrawalAnswer", "answer_withdrawal", "may_become", "quote", "replayed_request", "submission_digest",
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


@dataclass(frozen=True, slots=True)
class AskWithdrawal:
    """Publish `cancellation.withdrawal_requested` (and record that it was asked)."""


@dataclass(frozen=True, slots=True)
class AskedBefore:
    """A withdrawal was asked for this request before: asking twice is one withdrawal, the same answer again."""


@dataclass(frozen=True, slots=True)
class RefuseWithdrawal:
    why: str


WithdrawalAnswer = AskWithdrawal | AskedBefore | RefuseWithdrawal


def answer_withdrawal(*, status: RequestStatus, effective_date: date | None, today: date,
                      asked: bool) -> WithdrawalAnswer:
    """What intake does when a withdrawal is asked (`asked`: one was asked before). It may be asked before the
    decision: eligibility handles the two in order."""
    why = withdrawal_refusal(status, effective_date, today=today)
    if why is not None:
        return RefuseWithdrawal(why)
    return AskedBefore() if asked else AskWithdrawal()


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


# --- the quote (SPEC section 7) ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Quote:
    """What a request received on `received_on` would get: the decision, and if accepted its settlement.

    `effective_date` is the desired date, else the earliest; `codes` are the rules it breaks (empty when
    a submission would be accepted). A rejected quote has no settlement and no end of access.
    """

    received_on: date
    earliest_effective_date: date | None
    effective_date: date | None
    codes: tuple[RejectionCode, ...]
    first_anniversary: date
    offers: tuple[Offer, ...]
    settlement: Settlement | None

    @property
    def access_ends_on(self) -> date | None:
        """From the effective date the customer can no longer log in to the admin console."""
        return self.effective_date if self.settlement is not None else None


def quote(
    *,
    contract: ContractTerms,
    received_on: date,
    desired_effective_date: date | None,
    has_pending: bool,
    reason: Reason | None,
    paid_billing_dates: frozenset[date],
    offer_policy: OfferPolicy = DEFAULT_OFFER_POLICY,
) -> Quote:
    """The decision (decide) and the settlement (settle) a submission with these inputs gets."""
    decision = decide(contract=contract, received_on=received_on, desired_effective_date=desired_effective_date,
                      has_pending=has_pending, reason=reason, offer_policy=offer_policy)
    anniversary = first_anniversary(contract.start_date)
    if isinstance(decision, Rejected):
        return Quote(received_on=received_on, earliest_effective_date=decision.earliest_effective_date,
                     effective_date=desired_effective_date or decision.earliest_effective_date,
                     codes=decision.codes, first_anniversary=anniversary, offers=(), settlement=None)
    settlement = settle(start_date=contract.start_date, monthly_fee_jpy=contract.monthly_fee_jpy,
                        received_on=received_on, effective_date=decision.effective_date,
                        paid_billing_dates=paid_billing_dates)
    return Quote(received_on=received_on, earliest_effective_date=earliest_effective_date(contract.start_date,
                                                                                          received_on),
                 effective_date=decision.effective_date, codes=(), first_anniversary=decision.first_anniversary,
                 offers=decision.offers, settlement=settlement)
