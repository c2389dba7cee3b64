from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.contract_calendar import (
    TOKYO,
    add_months,
    billing_date,
    billing_dates_between,
    first_anniversary,
    last_billing_date_before,
    tokyo_date,
)

dates = st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31))


def _last_day(year: int, month: int) -> int:
    nxt = date(year + month // 12, month % 12 + 1, 1)
    return (nxt - timedelta(days=1)).day


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        pytest.param(datetime(2026, 3, 31, 15, 0, tzinfo=timezone.utc), date(2026, 4, 1), id="utc-15:00-is-next-tokyo-day"),
        pytest.param(datetime(2026, 3, 31, 14, 59, 59, tzinfo=timezone.utc), date(2026, 3, 31), id="utc-14:59:59-same-day"),
        pytest.param(datetime(2026, 4, 1, 0, 0, tzinfo=TOKYO), date(2026, 4, 1), id="tokyo-midnight"),
        pytest.param(datetime(2026, 3, 31, 23, 59, 59, tzinfo=TOKYO), date(2026, 3, 31), id="tokyo-last-second"),
        pytest.param(
            datetime(2026, 3, 31, 8, 0, tzinfo=timezone(timedelta(hours=-7))), date(2026, 4, 1), id="other-offset"
        ),
        pytest.param(datetime(2025, 12, 31, 15, 0, tzinfo=timezone.utc), date(2026, 1, 1), id="new-year"),
    ],
)
def test_tokyo_date(instant: datetime, expected: date) -> None:
    assert tokyo_date(instant) == expected


def test_tokyo_date_rejects_naive() -> None:
    with pytest.raises(ValueError, match="naive"):
        tokyo_date(datetime(2026, 3, 31, 15, 0))


@pytest.mark.parametrize(
    ("anchor", "months", "expected"),
    [
        pytest.param(date(2025, 1, 31), 1, date(2025, 2, 28), id="jan31+1-common-year"),
        pytest.param(date(2024, 1, 31), 1, date(2024, 2, 29), id="jan31+1-leap-year"),
        pytest.param(date(2024, 1, 31), 2, date(2024, 3, 31), id="jan31+2-from-anchor-not-chained"),
        pytest.param(date(2024, 1, 31), 3, date(2024, 4, 30), id="jan31+3-30-day-month"),
        pytest.param(date(2025, 1, 30), 1, date(2025, 2, 28), id="jan30+1"),
        pytest.param(date(2024, 1, 29), 1, date(2024, 2, 29), id="jan29+1-leap"),
        pytest.param(date(2025, 1, 29), 1, date(2025, 2, 28), id="jan29+1-common"),
        pytest.param(date(2025, 3, 15), 0, date(2025, 3, 15), id="zero"),
        pytest.param(date(2025, 11, 30), 3, date(2026, 2, 28), id="over-year-end"),
        pytest.param(date(2025, 12, 31), 1, date(2026, 1, 31), id="december+1"),
        pytest.param(date(2025, 3, 31), -1, date(2025, 2, 28), id="negative"),
        pytest.param(date(2023, 3, 31), 11, date(2024, 2, 29), id="mar31+11-leap-feb"),
    ],
)
def test_add_months(anchor: date, months: int, expected: date) -> None:
    assert add_months(anchor, months) == expected


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        pytest.param(date(2024, 2, 29), date(2025, 2, 28), id="leap-day-start"),
        pytest.param(date(2025, 4, 1), date(2026, 4, 1), id="plain"),
        pytest.param(date(2023, 2, 28), date(2024, 2, 28), id="feb28-into-leap-year"),
        pytest.param(date(2025, 12, 31), date(2026, 12, 31), id="dec31"),
    ],
)
def test_first_anniversary(start: date, expected: date) -> None:
    assert first_anniversary(start) == expected


@pytest.mark.parametrize(
    ("start", "n", "expected"),
    [
        pytest.param(date(2025, 4, 10), 0, date(2025, 4, 10), id="zero-is-start"),
        pytest.param(date(2023, 3, 31), 11, date(2024, 2, 29), id="start-31st-leap-feb"),
        pytest.param(date(2023, 3, 31), 12, date(2024, 3, 31), id="start-31st-back-to-31"),
        pytest.param(date(2023, 3, 30), 11, date(2024, 2, 29), id="start-30th-leap-feb"),
        pytest.param(date(2023, 3, 29), 11, date(2024, 2, 29), id="start-29th-leap-feb"),
        pytest.param(date(2023, 3, 29), 23, date(2025, 2, 28), id="start-29th-common-feb"),
        pytest.param(date(2023, 3, 30), 12, date(2024, 3, 30), id="start-30th-back-to-30"),
    ],
)
def test_billing_date(start: date, n: int, expected: date) -> None:
    assert billing_date(start, n) == expected


def test_billing_date_rejects_negative_index() -> None:
    with pytest.raises(ValueError):
        billing_date(date(2025, 1, 1), -1)


@pytest.mark.parametrize(
    ("start", "from_date", "until", "expected"),
    [
        pytest.param(
            date(2024, 1, 31),
            date(2024, 1, 31),
            date(2024, 5, 1),
            [date(2024, 1, 31), date(2024, 2, 29), date(2024, 3, 31), date(2024, 4, 30)],
            id="month-end-clamping",
        ),
        pytest.param(
            date(2025, 1, 15),
            date(2025, 3, 15),
            date(2025, 5, 15),
            [date(2025, 3, 15), date(2025, 4, 15)],
            id="from-inclusive-until-exclusive",
        ),
        pytest.param(
            date(2025, 1, 15), date(2025, 3, 16), date(2025, 5, 16), [date(2025, 4, 15), date(2025, 5, 15)], id="from-day-after"
        ),
        pytest.param(date(2025, 1, 15), date(2024, 6, 1), date(2025, 2, 1), [date(2025, 1, 15)], id="from-before-start"),
        pytest.param(date(2025, 1, 15), date(2025, 3, 16), date(2025, 4, 15), [], id="empty-window"),
        pytest.param(date(2025, 1, 15), date(2025, 5, 1), date(2025, 3, 1), [], id="until-before-from"),
    ],
)
def test_billing_dates_between(start: date, from_date: date, until: date, expected: list[date]) -> None:
    assert billing_dates_between(start, from_date, until) == expected


@pytest.mark.parametrize(
    ("start", "day", "expected"),
    [
        pytest.param(date(2025, 1, 15), date(2025, 1, 15), None, id="on-start"),
        pytest.param(date(2025, 1, 15), date(2025, 1, 1), None, id="before-start"),
        pytest.param(date(2025, 1, 15), date(2025, 1, 16), date(2025, 1, 15), id="day-after-start"),
        pytest.param(date(2025, 1, 15), date(2026, 1, 15), date(2025, 12, 15), id="on-a-billing-date-is-strict"),
        pytest.param(date(2025, 1, 15), date(2026, 1, 16), date(2026, 1, 15), id="day-after-a-billing-date"),
        pytest.param(date(2024, 1, 31), date(2024, 3, 31), date(2024, 2, 29), id="month-end-start"),
        pytest.param(date(2024, 1, 31), date(2024, 3, 30), date(2024, 2, 29), id="month-end-start-earlier-in-month"),
    ],
)
def test_last_billing_date_before(start: date, day: date, expected: date | None) -> None:
    assert last_billing_date_before(start, day) == expected


@given(anchor=dates, months=st.integers(min_value=-600, max_value=600))
def test_add_months_keeps_anchor_day_clamped(anchor: date, months: int) -> None:
    result = add_months(anchor, months)
    assert result.day == min(anchor.day, _last_day(result.year, result.month))
    assert (result.year * 12 + result.month) - (anchor.year * 12 + anchor.month) == months


@given(start=dates, a=dates, b=dates)
def test_billing_dates_between_is_increasing_and_within_bounds(start: date, a: date, b: date) -> None:
    from_date, until = min(a, b), max(a, b)
    result = billing_dates_between(start, from_date, until)
    assert all(x < y for x, y in zip(result, result[1:]))
    assert all(from_date <= x < until and x >= start for x in result)
    # Nothing missed: every billing date in the window appears.
    expected = set()
    n = 0
    while (d := billing_date(start, n)) < until:
        if d >= from_date:
            expected.add(d)
        n += 1
    assert set(result) == expected


@given(start=dates, day=dates)
def test_last_billing_date_before_is_the_latest(start: date, day: date) -> None:
    result = last_billing_date_before(start, day)
    if day <= start:
        assert result is None
        return
    assert result is not None and start <= result < day
    assert billing_dates_between(start, result + timedelta(days=1), day) == []
