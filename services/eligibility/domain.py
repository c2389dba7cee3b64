"""Eligibility's rules: may a cancellation take effect on the requested date, what to offer, and when
a pending cancellation completes or may be withdrawn.

The decision's rules are the contract's rules, written once in shared.contract_rules (intake quotes with
the same functions); this module names the ones eligibility decides with and adds its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from shared.contract_rules import (DEFAULT_OFFER_POLICY, HOLDOUT_MAX_PERCENT, MINIMUM_TERM_MONTHS, NOTICE_PERIOD,
                                   Accepted, ContractTerms, Decision, OfferPolicy, Rejected, can_withdraw, decide,
                                   earliest_effective_date, hold_out, in_holdout, offer_policy_from_json, offers_for,
                                   parse_offer_policy)
from shared.vocabulary import Offer, Reason, RejectionCode

__all__ = [
    "DEFAULT_OFFER_POLICY",
    "HOLDOUT_MAX_PERCENT",
    "MINIMUM_TERM_MONTHS",
    "NOTICE_PERIOD",
    "Accepted",
    "AlreadyWithdrawn",
    "CancellationState",
    "CannotWithdraw",
    "ContractTerms",
    "Decision",
    "Offer",
    "OfferPolicy",
    "Reason",
    "Rejected",
    "RejectionCode",
    "WithdrawNow",
    "WithdrawalDecision",
    "can_withdraw",
    "completion_cutoff",
    "contract_is_live",
    "decide",
    "decide_withdrawal",
    "earliest_effective_date",
    "hold_out",
    "in_holdout",
    "is_due_for_completion",
    "offer_policy_from_json",
    "offers_for",
    "parse_offer_policy",
    "withdrawal_refusal",
]


def contract_is_live(contract: ContractTerms | None) -> bool:
    """Only a live contract (known, not ended) can have a pending cancellation."""
    return contract is not None and not contract.ended


def completion_cutoff(today: date) -> date:
    """The latest effective date that completes `today`: on (or after, if we were down) the effective date
    the cancellation completes by itself."""
    return today


def is_due_for_completion(*, effective_date: date, today: date) -> bool:
    return effective_date <= completion_cutoff(today)


@dataclass(frozen=True, slots=True)
class CancellationState:
    """A decided request as withdrawal sees it."""

    status: str  # accepted, rejected, withdrawn, completed
    effective_date: date | None
    offers: tuple[str, ...] = ()  # what the acceptance carried
    taken_offer: str | None = None  # what it was withdrawn with, once withdrawn


def withdrawal_refusal(cancellation: CancellationState | None, *, today: date,
                       taken_offer: str | None = None) -> str | None:
    """Why a withdrawal (taking `taken_offer` if given) cannot be done, or None: only a pending (accepted)
    cancellation, before its date, and a taken offer must be one the request carried (SPEC section 6)."""
    if cancellation is None:
        return "unknown request"
    if cancellation.status != "accepted":
        return f"the request is {cancellation.status}"
    if cancellation.effective_date is None or not can_withdraw(effective_date=cancellation.effective_date,
                                                               today=today):
        return f"the effective date {cancellation.effective_date} has come: the contract has ended"
    if taken_offer is not None and taken_offer not in cancellation.offers:
        carried = ", ".join(str(o) for o in cancellation.offers) or "none"
        return f"offer {taken_offer} is not among the request's offers ({carried})"
    return None


# --- withdrawals, with or without an offer taken (SPEC section 6) ----------------------------------

@dataclass(frozen=True, slots=True)
class WithdrawNow:
    """Withdraw the request, recording the offer taken (None: withdrawn without one)."""

    taken_offer: Offer | None


@dataclass(frozen=True, slots=True)
class AlreadyWithdrawn:
    """The same withdrawal (the same offer, or none) again: it was made once, nothing more to do."""


@dataclass(frozen=True, slots=True)
class CannotWithdraw:
    why: str


WithdrawalDecision = WithdrawNow | AlreadyWithdrawn | CannotWithdraw


def decide_withdrawal(cancellation: CancellationState | None, *, today: date,
                      taken_offer: str | None) -> WithdrawalDecision:
    """Withdraw, or not: taking the offer the request was already withdrawn with (or withdrawing again
    without one) is the same withdrawal, not a second one and not an error (SPEC section 6)."""
    if cancellation is not None and cancellation.status == "withdrawn" and taken_offer == cancellation.taken_offer:
        return AlreadyWithdrawn()
    why = withdrawal_refusal(cancellation, today=today, taken_offer=taken_offer)
    if why is not None:
        return CannotWithdraw(why)
    return WithdrawNow(None if taken_offer is None else Offer(taken_offer))
