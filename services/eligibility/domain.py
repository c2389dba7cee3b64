"""Eligibility's rules: may a cancellation take effect on the requested date (SPEC section 1), what to
offer (section 3), and when a pending cancellation completes or may be withdrawn.

Pure functions: frozen values in, a decision out, no I/O. These are the only implementation: intake's
quote (SPEC section 7) calls `decide` and `hold_out` from here, so a quote is exactly the decision a
submission gets.

- minimum term: no earlier than the first anniversary (start_date + 12 months);
- notice: at least 45 days after the received-on date; the earliest effective date is the later of the two;
- pending and ended contracts; the offers that fit a reason under the (configurable) offer policy;
- the holdout (section 6): a deterministic share of contracts is given no offers, to measure their lift.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from types import MappingProxyType

from shared.contract_calendar import first_anniversary
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

NOTICE_PERIOD = timedelta(days=45)
# first_anniversary() is add_months(start, 12); kept here as the rule's name for readers and reports.
MINIMUM_TERM_MONTHS = 12


OfferPolicy = Mapping[Reason, tuple[Offer, ...]]

DEFAULT_OFFER_POLICY: OfferPolicy = MappingProxyType(
    {
        Reason.INITIAL_SETUP_FAILED: (Offer.setup_support,),
        Reason.TOO_DIFFICULT: (Offer.guided_training,),
        Reason.NOT_USEFUL_FOR_BUSINESS: (Offer.consultation, Offer.downgrade),
        Reason.SWITCHING_TOOL: (Offer.consultation, Offer.discount),
        Reason.NO_LONGER_USED: (Offer.downgrade,),
        # Nothing we offer brings back a closed business or a lost LINE account.
        Reason.BUSINESS_CLOSED: (),
        Reason.LINE_ACCOUNT_UNAVAILABLE: (),
    }
)


def offers_for(reason: Reason | None, policy: OfferPolicy = DEFAULT_OFFER_POLICY) -> tuple[Offer, ...]:
    """The offers that fit `reason` under `policy` (none if the policy does not mention it, or no reason)."""
    return tuple(policy.get(reason, ())) if reason is not None else ()


def parse_offer_policy(raw: Mapping[str, Sequence[str]]) -> OfferPolicy:
    """Validate a policy read from settings JSON, e.g. {"TOO_DIFFICULT": ["guided_training"]}.

    The result replaces the default policy: a reason left out gets no offers.
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"offer policy must be an object of reason -> offers, got {type(raw).__name__}")
    policy: dict[Reason, tuple[Offer, ...]] = {}
    for key, values in raw.items():
        try:
            reason = Reason(key)
        except ValueError:
            raise ValueError(
                f"offer policy: unknown reason {key!r}; expected one of {', '.join(Reason)}"
            ) from None
        # A bare string is a Sequence too; "discount" would otherwise read as 8 one-letter offers.
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise ValueError(f"offer policy: offers for {key!r} must be a list, got {values!r}")
        offers: list[Offer] = []
        for value in values:
            try:
                offer = Offer(value)
            except ValueError:
                raise ValueError(
                    f"offer policy: unknown offer {value!r} for {key!r}; expected one of {', '.join(Offer)}"
                ) from None
            if offer in offers:
                raise ValueError(f"offer policy: offer {value!r} listed twice for {key!r}")
            offers.append(offer)
        policy[reason] = tuple(offers)
    return MappingProxyType(policy)


def offer_policy_from_json(text: str | None) -> OfferPolicy:
    """The policy of a setting (JSON, see parse_offer_policy); the default when unset."""
    return parse_offer_policy(json.loads(text)) if text else DEFAULT_OFFER_POLICY


@dataclass(frozen=True, slots=True)
class ContractTerms:
    """What eligibility needs to know about a contract."""

    contract_id: str
    start_date: date
    monthly_fee_jpy: int
    ended: bool = False

    def __post_init__(self) -> None:
        if self.monthly_fee_jpy < 0:
            raise ValueError(f"monthly_fee_jpy must be >= 0, got {self.monthly_fee_jpy}")


def earliest_effective_date(start_date: date, received_on: date) -> date:
    """The first date that honours both the minimum term and the notice period."""
    return max(first_anniversary(start_date), received_on + NOTICE_PERIOD)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The cancellation will take effect on effective_date."""

    effective_date: date
    first_anniversary: date
    offers: tuple[Offer, ...]
    holdout: bool = False  # in the holdout group: the offers that fit were withheld (see hold_out)


@dataclass(frozen=True, slots=True)
class Rejected:
    """Every broken rule, and the date the customer could ask for instead (if any)."""

    codes: tuple[RejectionCode, ...]
    earliest_effective_date: date | None


Decision = Accepted | Rejected


def decide(
    *,
    contract: ContractTerms | None,
    received_on: date,
    desired_effective_date: date | None,
    has_pending: bool,
    reason: Reason | None,
    offer_policy: OfferPolicy = DEFAULT_OFFER_POLICY,
) -> Decision:
    """Accept or reject a cancellation request received on `received_on`."""
    if contract is None:
        return Rejected((RejectionCode.CONTRACT_NOT_FOUND,), None)
    if contract.ended:
        # Nothing left to cancel; reuse needs a new contract, so no date to suggest.
        return Rejected((RejectionCode.CONTRACT_ENDED,), None)

    anniversary = first_anniversary(contract.start_date)
    earliest = earliest_effective_date(contract.start_date, received_on)
    effective = desired_effective_date if desired_effective_date is not None else earliest

    # Report every broken rule at once so the customer can fix the request in one go.
    codes: list[RejectionCode] = []
    if effective < anniversary:
        codes.append(RejectionCode.MINIMUM_TERM)
    if effective < received_on + NOTICE_PERIOD:
        codes.append(RejectionCode.NOTICE_PERIOD)
    if has_pending:
        codes.append(RejectionCode.ALREADY_PENDING)
    if codes:
        return Rejected(tuple(codes), earliest)
    return Accepted(effective, anniversary, offers_for(reason, offer_policy))


def can_withdraw(*, effective_date: date, today: date) -> bool:
    """A request can be withdrawn until its effective date, when it completes."""
    return today < effective_date


# --- the holdout (SPEC section 6) ------------------------------------------------------------------

HOLDOUT_MAX_PERCENT = 50


def in_holdout(contract_id: str, percent: int) -> bool:
    """Is the contract in the holdout group of `percent` % (0-50)? Deterministic: the contract's bucket
    (0-99) is the first 8 bytes of SHA-256 of its id, so a contract stays in its group across requests,
    restarts and services, and the buckets are uniform whatever the ids look like."""
    if not 0 <= percent <= HOLDOUT_MAX_PERCENT:
        raise ValueError(f"holdout percent must be 0-{HOLDOUT_MAX_PERCENT}, got {percent}")
    bucket = int.from_bytes(hashlib.sha256(contract_id.encode()).digest()[:8], "big") % 100
    return bucket < percent


def hold_out(decision: Decision, *, contract_id: str, percent: int) -> Decision:
    """An acceptance in the holdout group carries no offers and says so. Only an acceptance that had offers
    to withhold is held out: a reason with none (a closed business) would otherwise dilute the holdout's save
    rate with customers no offer could keep, and the lift would be overstated."""
    if isinstance(decision, Accepted) and decision.offers and in_holdout(contract_id, percent):
        return replace(decision, offers=(), holdout=True)
    return decision


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
