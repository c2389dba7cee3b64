"""The contract calendar: Tokyo dates, anniversaries and monthly billing dates.

Every contract date is a Tokyo calendar date. Billing dates fall monthly on the
start date's day of month, clamped to the month's last day, and are always
computed from the start date (never chained), so a Jan 31 start bills on
Feb 28/29 and then Mar 31 again.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

__all__ = [
    "TOKYO",
    "add_months",
    "billing_date",
    "billing_dates_between",
    "first_anniversary",
    "last_billing_date_before",
    "tokyo_date",
]

TOKYO = ZoneInfo("Asia/Tokyo")


def tokyo_date(instant: datetime) -> date:
    """The Tokyo calendar date of an aware instant."""
    if instant.tzinfo is None or instant.utcoffset() is None:
        # A naive datetime has no instant; guessing a zone would shift dates silently.
        raise ValueError(f"tokyo_date needs an aware datetime, got naive {instant!r}")
    return instant.astimezone(TOKYO).date()


def _last_day_of_month(year: int, month: int) -> int:
    # Plain arithmetic: the one thing needed of the stdlib calendar module.
    if month == 12:
        return 31
    return (date(year, month + 1, 1) - timedelta(days=1)).day


def _month_index(day: date) -> int:
    """Months since year 0, so month arithmetic is plain integer arithmetic."""
    return day.year * 12 + (day.month - 1)


def add_months(anchor: date, months: int) -> date:
    """`anchor` moved by `months`, on the anchor's day clamped to the target month's end."""
    year, month0 = divmod(_month_index(anchor) + months, 12)
    month = month0 + 1
    return date(year, month, min(anchor.day, _last_day_of_month(year, month)))


def first_anniversary(start_date: date) -> date:
    """The end of the 12-month minimum term (a Feb 29 start ends on Feb 28)."""
    return add_months(start_date, 12)


def billing_date(start_date: date, n: int) -> date:
    """The n-th billing date of a contract; billing date 0 is the start date."""
    if n < 0:
        raise ValueError(f"billing date index must be >= 0, got {n}")
    return add_months(start_date, n)


def billing_dates_between(start_date: date, from_date: date, until: date) -> list[date]:
    """Every billing date b with from_date <= b < until, ascending."""
    # Billing date n lies in the n-th month after the start, so the first candidate
    # is the one in from_date's month; every earlier one is in an earlier month.
    n = max(0, _month_index(from_date) - _month_index(start_date))
    dates: list[date] = []
    while (b := billing_date(start_date, n)) < until:
        if b >= from_date:
            dates.append(b)
        n += 1
    return dates


def last_billing_date_before(start_date: date, day: date) -> date | None:
    """The latest billing date strictly before `day` (None if day <= start_date)."""
    if day <= start_date:
        return None
    n = _month_index(day) - _month_index(start_date)
    b = billing_date(start_date, n)
    # The billing date in day's own month may fall on or after day; then it is the previous one.
    return b if b < day else billing_date(start_date, n - 1)
