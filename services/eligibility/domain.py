"""Eligibility rules: may a cancellation take effect on the requested date, and what to offer.

Pure functions: the contract, the received-on date and the desired effective date go in,
a decision comes out. Never blocks on retention: offers ride along with an acceptance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from types import MappingProxyType

from shared.contract_calendar import first_anniversary
from shared.vocabulary import Offer, Reason, RejectionCode

__all__ = [
    "DEFAULT_OFFER_POLICY",
    "MINIMUM_TERM_MONTHS",
    "NOTICE_PERIOD",
    "Accepted",
    "ContractTerms",
    "Decision",
    "Offer",
    "Reason",
    "Rejected",
    "RejectionCode",
    "CancellationState",
    "can_withdraw",
    "completion_cutoff",
    "contract_is_live",
    "decide",
    "earliest_effective_date",
    "is_due_for_completion",
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


def offers_for(reason: Reason, policy: OfferPolicy = DEFAULT_OFFER_POLICY) -> tuple[Offer, ...]:
    """The offers that fit `reason` under `policy` (none if the policy does not mention it)."""
    return tuple(policy.get(reason, ()))


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


def contract_is_live(contract: ContractTerms | None) -> bool:
    """Only a live contract (known, not ended) can have a pending cancellation."""
    return contract is not None and not contract.ended


def earliest_effective_date(start_date: date, received_on: date) -> date:
    """The first date that honours both the minimum term and the notice period."""
    return max(first_anniversary(start_date), received_on + NOTICE_PERIOD)


@dataclass(frozen=True, slots=True)
class Accepted:
    """The cancellation will take effect on effective_date."""

    effective_date: date
    first_anniversary: date
    offers: tuple[Offer, ...]


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
    reason: Reason,
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
