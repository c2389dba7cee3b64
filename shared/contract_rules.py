"""The contract's rules (SPEC section 1): one implementation, used by every service that applies them.

eligibility decides with them, billing settles with them, and intake quotes with them, so a quote
shown before submitting is exactly the decision and the settlement the submission then gets.
Pure functions: frozen values in, a decision, a settlement or a quote out; no I/O.

- the decision: minimum term (the first anniversary), notice period (45 days after the received-on
  date), the earliest effective date, pending and ended contracts, the offers for a reason;
- the settlement: full monthly fees only, no daily pro-rating and never a refund. A payment made
  before the effective date covers one month from its billing date, so the customer is paid through
  the billing date that follows the last one before the effective date;
- the quote: both, for a contract as it stands on a received-on date.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from types import MappingProxyType

from shared.contract_calendar import billing_date, billing_dates_between, first_anniversary, last_billing_date_before
from shared.vocabulary import Offer, Reason, RejectionCode

__all__ = [
    "DEFAULT_OFFER_POLICY",
    "HOLDOUT_MAX_PERCENT",
    "MINIMUM_TERM_MONTHS",
    "NOTICE_PERIOD",
    "Accepted",
    "Charge",
    "ContractTerms",
    "Decision",
    "OfferPolicy",
    "Quote",
    "Rejected",
    "Settlement",
    "can_withdraw",
    "decide",
    "earliest_effective_date",
    "hold_out",
    "in_holdout",
    "offer_policy_from_json",
    "offers_for",
    "parse_offer_policy",
    "quote",
    "settle",
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


# --- the settlement --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Charge:
    """One monthly fee charged on a billing date."""

    billing_date: date
    amount_jpy: int


@dataclass(frozen=True, slots=True)
class Settlement:
    """What is still owed when the cancellation takes effect."""

    charges: tuple[Charge, ...]
    total_jpy: int
    refund_jpy: int
    paid_through: date


def _months_after_start(start_date: date, day: date) -> int:
    # Billing date n always lies in the n-th month after the start month.
    return (day.year - start_date.year) * 12 + (day.month - start_date.month)


def settle(
    *,
    start_date: date,
    monthly_fee_jpy: int,
    received_on: date,
    effective_date: date,
    paid_billing_dates: frozenset[date],
) -> Settlement:
    """Charge every unpaid billing date in [received_on, effective_date) the full fee."""
    if monthly_fee_jpy < 0:
        raise ValueError(f"monthly_fee_jpy must be >= 0, got {monthly_fee_jpy}")
    if effective_date <= start_date:
        raise ValueError(f"effective_date {effective_date} must be after start_date {start_date}")

    charges = tuple(
        Charge(b, monthly_fee_jpy)
        for b in billing_dates_between(start_date, received_on, effective_date)
        if b not in paid_billing_dates
    )
    last = last_billing_date_before(start_date, effective_date)
    assert last is not None  # effective_date > start_date, so billing date 0 qualifies
    # Re-derive from the start date rather than add_months(last, 1): a Jan 31 start
    # billed on Feb 29 is paid through Mar 31, not Mar 29.
    paid_through = billing_date(start_date, _months_after_start(start_date, last) + 1)
    return Settlement(
        charges=charges,
        total_jpy=sum(c.amount_jpy for c in charges),
        refund_jpy=0,
        paid_through=paid_through,
    )


# --- the quote ------------------------------------------------------------------------------------

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
