"""billing's rules: the final settlement of a cancelled contract (SPEC section 1), and what a withdrawal
does to it.

Full monthly fees only, no daily pro-rating and never a refund. A payment made before the effective date
covers one month from its billing date, so the customer is paid through the billing date that follows the
last one before the effective date. Intake's quote (SPEC section 7) settles with `settle` from here.
Pure functions: frozen values in, a settlement out, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from shared.contract_calendar import billing_date, billing_dates_between, last_billing_date_before

__all__ = ["Charge", "Settlement", "Voiding", "settle", "voiding"]


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


# --- a withdrawal -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Voiding:
    """What a withdrawal does to the request's settlement."""

    void: bool  # the settlement (issued, or awaiting its contract) is voided
    announce: bool  # `settlement.voided` is published: only an issued settlement was ever announced


def voiding(status: str | None) -> Voiding:
    """A withdrawal voids the request's settlement, issued or still awaiting its contract; voiding twice is
    once; a request billing never settled (`None`) has nothing to void."""
    if status is None or status == "voided":
        return Voiding(void=False, announce=False)
    return Voiding(void=True, announce=status == "issued")
