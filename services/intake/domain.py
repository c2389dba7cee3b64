"""intake's rules: a submission key acts once, who may still withdraw (and take an offer; asking twice is one
withdrawal), how a request's status moves, and the quote (SPEC section 7: eligibility's decision, with its
holdout, and billing's settlement, their own functions, for a contract as it stands on a received-on date).

Pure functions: values in, a decision out, no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

import orjson

from services.billing.domain import Settlement, settle
from services.eligibility.domain import (DEFAULT_OFFER_POLICY, CancellationState, ContractTerms, OfferPolicy, Rejected,
                                         can_withdraw, decide, earliest_effective_date, hold_out)
from services.eligibility.domain import withdrawal_refusal as eligibility_refusal
from shared.contract_calendar import first_anniversary
from shared.request_lifecycle import may_become
from shared.vocabulary import Offer, Reason, RejectionCode, RequestStatus

__all__ = ["ENDED", "AskWithdrawal", "AskedBefore", "IdempotencyConflict", "Quote", "RefuseWithdrawal", "Refusal",
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


# --- a withdrawal asked over HTTP or Kafka, with an offer taken or not (SPEC sections 2 and 6) -------------

@dataclass(frozen=True, slots=True)
class AskWithdrawal:
    """Publish `cancellation.withdrawal_requested` with this offer taken (None: without one)."""

    taken_offer: str | None


@dataclass(frozen=True, slots=True)
class AskedBefore:
    """The same withdrawal was asked before: one withdrawal, one take; the same answer again."""


class Refusal(StrEnum):
    """What kind of 409 a withdrawal (or a take) gets: what the customer's page words, what a dead letter names."""

    ended = "ended"  # the request is rejected, completed or withdrawn
    undecided = "undecided"  # an offer asked for before the request was accepted
    date_come = "date_come"  # the effective date has come: the contract has ended
    not_offered = "not_offered"  # the offer is not among the request's offers
    already_withdrawing = "already_withdrawing"  # asked before, with another offer or none


@dataclass(frozen=True, slots=True)
class RefuseWithdrawal:
    why: str
    refusal: Refusal

    @property
    def field(self) -> str:
        """What the refusal is about, for a submission's dead-letter reason."""
        return "taken_offer" if self.refusal in (Refusal.not_offered, Refusal.already_withdrawing) else "request_id"


WithdrawalAnswer = AskWithdrawal | AskedBefore | RefuseWithdrawal


def answer_withdrawal(*, status: str, effective_date: date | None, today: date, offers: Sequence[str],
                      asked: bool, asked_with: str | None, taken_offer: str | None) -> WithdrawalAnswer:
    """`asked`: a withdrawal was asked for this request before, with the offer `asked_with` (or none).

    Without an offer (SPEC section 2): refused once the request is completed, rejected or withdrawn, or its
    effective date has come; asked twice is one withdrawal. It may be asked before the decision (eligibility
    handles the two in order). Taking an offer (SPEC section 6): the request must be accepted, its effective
    date not come and the offer among its offers; taking the same offer twice is one take, and a request
    already being withdrawn (without an offer, or with another) cannot take one.
    """
    if taken_offer is None:
        why = withdrawal_refusal(RequestStatus(status), effective_date, today=today)
        if why is not None:
            return RefuseWithdrawal(why, Refusal.ended if RequestStatus(status) in ENDED else Refusal.date_come)
        return AskedBefore() if asked else AskWithdrawal(None)
    if asked or status == "withdrawn":
        if asked_with == taken_offer:
            return AskedBefore()
        before = f"with offer {asked_with}" if asked_with else "without an offer"
        return RefuseWithdrawal(f"the request is already being withdrawn {before}", Refusal.already_withdrawing)
    why = eligibility_refusal(CancellationState(str(status), effective_date, tuple(offers)), today=today,
                              taken_offer=taken_offer)
    if why is not None:
        in_time = effective_date is not None and can_withdraw(effective_date=effective_date, today=today)
        refusal = (Refusal.undecided if status == "received" else Refusal.ended if status != "accepted"
                   else Refusal.not_offered if in_time else Refusal.date_come)
        return RefuseWithdrawal(why, refusal)
    return AskWithdrawal(taken_offer)


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
    holdout: bool = False  # the contract is in the holdout group: the offers that fit are withheld (hold_out)

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
    holdout_percent: int = 0,
) -> Quote:
    """The decision (decide, then hold_out, as eligibility decides) and the settlement (settle) a submission
    with these inputs gets: a contract in the holdout group is quoted no offers, as it will be given none."""
    decision = hold_out(decide(contract=contract, received_on=received_on,
                               desired_effective_date=desired_effective_date, has_pending=has_pending, reason=reason,
                               offer_policy=offer_policy),
                        contract_id=contract.contract_id, percent=holdout_percent)
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
                 offers=decision.offers, settlement=settlement, holdout=decision.holdout)
