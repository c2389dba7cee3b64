"""Eligibility's rules: may a cancellation take effect on the requested date, what to offer, and when
a pending cancellation completes or may be withdrawn.

The decision's rules are the contract's rules, written once in shared.contract_rules (intake quotes with
the same functions); this module names the ones eligibility decides with and adds its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from shared.contract_rules import (DEFAULT_OFFER_POLICY, MINIMUM_TERM_MONTHS, NOTICE_PERIOD, Accepted, ContractTerms,
                                   Decision, OfferPolicy, Rejected, can_withdraw, decide, earliest_effective_date,
                                   offer_policy_from_json, offers_for, parse_offer_policy)
from shared.vocabulary import Offer, Reason, RejectionCode

__all__ = [
    "DEFAULT_OFFER_POLICY",
    "MINIMUM_TERM_MONTHS",
    "NOTICE_PERIOD",
    "Accepted",
    "CancellationState",
    "ContractTerms",
    "Decision",
    "Offer",
    "OfferPolicy",
    "Reason",
    "Rejected",
    "RejectionCode",
    "can_withdraw",
    "completion_cutoff",
    "contract_is_live",
    "decide",
    "earliest_effective_date",
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


def withdrawal_refusal(cancellation: CancellationState | None, *, today: date) -> str | None:
    """Why a withdrawal cannot be done, or None: only a pending (accepted) cancellation, before its date."""
    if cancellation is None:
        return "unknown request"
    if cancellation.status != "accepted":
        return f"the request is {cancellation.status}"
    if cancellation.effective_date is None or not can_withdraw(effective_date=cancellation.effective_date,
                                                               today=today):
        return f"the effective date {cancellation.effective_date} has come: the contract has ended"
    return None
