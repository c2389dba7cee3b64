from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.billing.domain import Charge, Settlement, Voiding, settle, voiding
from shared.contract_calendar import billing_date, billing_dates_between

D = date


@pytest.mark.parametrize(
    ("start", "fee", "received_on", "effective", "paid", "charge_dates", "paid_through"),
    [
        pytest.param(
            D(2024, 4, 10), 10_000, D(2025, 6, 1), D(2025, 7, 16), frozenset(),
            [D(2025, 6, 10), D(2025, 7, 10)], D(2025, 8, 10), id="none-paid",
        ),
        pytest.param(
            D(2024, 4, 10), 10_000, D(2025, 6, 1), D(2025, 7, 16), frozenset({D(2025, 6, 10)}),
            [D(2025, 7, 10)], D(2025, 8, 10), id="some-paid",
        ),
        pytest.param(
            D(2024, 4, 10), 10_000, D(2025, 6, 1), D(2025, 7, 16), frozenset({D(2025, 6, 10), D(2025, 7, 10)}),
            [], D(2025, 8, 10), id="all-paid",
        ),
        pytest.param(
            D(2024, 4, 10), 10_000, D(2025, 6, 1), D(2025, 7, 16), frozenset({D(2025, 5, 10), D(2025, 6, 11)}),
            [D(2025, 6, 10), D(2025, 7, 10)], D(2025, 8, 10), id="payments-outside-window-ignored",
        ),
        pytest.param(
            D(2024, 4, 10), 10_000, D(2025, 6, 10), D(2025, 7, 25), frozenset(),
            [D(2025, 6, 10), D(2025, 7, 10)], D(2025, 8, 10), id="received-on-billing-date-is-charged",
        ),
        pytest.param(
            D(2024, 4, 10), 10_000, D(2025, 6, 11), D(2025, 7, 26), frozenset(),
            [D(2025, 7, 10)], D(2025, 8, 10), id="received-day-after-billing-date",
        ),
        pytest.param(
            D(2024, 4, 10), 10_000, D(2025, 5, 26), D(2025, 7, 10), frozenset(),
            [D(2025, 6, 10)], D(2025, 7, 10), id="effective-on-billing-date-not-charged",
        ),
        pytest.param(
            D(2023, 1, 31), 5_000, D(2024, 1, 15), D(2024, 3, 1), frozenset(),
            [D(2024, 1, 31), D(2024, 2, 29)], D(2024, 3, 31), id="start-31st-leap-feb-paid-through-31st",
        ),
        pytest.param(
            D(2023, 3, 31), 5_000, D(2024, 1, 15), D(2024, 3, 15), frozenset(),
            [D(2024, 1, 31), D(2024, 2, 29)], D(2024, 3, 31), id="start-mar31-billing-feb29",
        ),
        pytest.param(
            D(2023, 1, 30), 5_000, D(2024, 1, 10), D(2024, 3, 1), frozenset(),
            [D(2024, 1, 30), D(2024, 2, 29)], D(2024, 3, 30), id="start-30th",
        ),
        pytest.param(
            D(2023, 1, 29), 5_000, D(2025, 1, 10), D(2025, 3, 1), frozenset(),
            [D(2025, 1, 29), D(2025, 2, 28)], D(2025, 3, 29), id="start-29th-common-year",
        ),
        pytest.param(
            D(2024, 2, 29), 8_000, D(2025, 1, 1), D(2025, 2, 28), frozenset(),
            [D(2025, 1, 29)], D(2025, 2, 28), id="leap-day-start-ends-on-anniversary",
        ),
        pytest.param(
            D(2024, 4, 10), 0, D(2025, 6, 1), D(2025, 7, 16), frozenset(),
            [D(2025, 6, 10), D(2025, 7, 10)], D(2025, 8, 10), id="free-plan",
        ),
    ],
)
def test_settle(
    start: date,
    fee: int,
    received_on: date,
    effective: date,
    paid: frozenset[date],
    charge_dates: list[date],
    paid_through: date,
) -> None:
    result = settle(
        start_date=start, monthly_fee_jpy=fee, received_on=received_on,
        effective_date=effective, paid_billing_dates=paid,
    )
    assert result == Settlement(
        charges=tuple(Charge(d, fee) for d in charge_dates),
        total_jpy=fee * len(charge_dates),
        refund_jpy=0,
        paid_through=paid_through,
    )


@pytest.mark.parametrize(
    ("fee", "effective"),
    [
        pytest.param(-1, D(2025, 7, 16), id="negative-fee"),
        pytest.param(10_000, D(2024, 4, 10), id="effective-on-start"),
        pytest.param(10_000, D(2024, 4, 9), id="effective-before-start"),
    ],
)
def test_settle_rejects_bad_input(fee: int, effective: date) -> None:
    with pytest.raises(ValueError):
        settle(
            start_date=D(2024, 4, 10), monthly_fee_jpy=fee, received_on=D(2024, 1, 1),
            effective_date=effective, paid_billing_dates=frozenset(),
        )


@st.composite
def settlement_inputs(draw: st.DrawFn) -> tuple[date, int, date, date, frozenset[date]]:
    start = draw(st.dates(min_value=D(2015, 1, 1), max_value=D(2035, 12, 31)))
    fee = draw(st.integers(min_value=0, max_value=500_000))
    received_on = start + timedelta(days=draw(st.integers(min_value=-60, max_value=1500)))
    effective = max(start + timedelta(days=1), received_on + timedelta(days=draw(st.integers(0, 800))))
    window = billing_dates_between(start, start, effective + timedelta(days=62))
    paid = frozenset(draw(st.lists(st.sampled_from(window), max_size=len(window)))) if window else frozenset()
    return start, fee, received_on, effective, paid


@given(settlement_inputs())
def test_settle_properties(inputs: tuple[date, int, date, date, frozenset[date]]) -> None:
    start, fee, received_on, effective, paid = inputs
    result = settle(
        start_date=start, monthly_fee_jpy=fee, received_on=received_on,
        effective_date=effective, paid_billing_dates=paid,
    )
    billing = set(billing_dates_between(start, start, result.paid_through + timedelta(days=1)))
    unpaid = [b for b in billing if received_on <= b < effective and b not in paid]

    assert result.total_jpy == fee * len(result.charges)
    assert len(result.charges) == len(unpaid)
    assert result.refund_jpy == 0
    assert all(c.billing_date in billing and c.billing_date not in paid for c in result.charges)
    assert all(c.amount_jpy == fee for c in result.charges)
    assert result.paid_through in billing
    assert result.paid_through >= effective
    if result.charges:
        assert result.paid_through > result.charges[-1].billing_date
    # paid_through is the first billing date on or after the effective date.
    assert not [b for b in billing if effective <= b < result.paid_through]


def test_paid_through_is_not_chained_from_a_clamped_date() -> None:
    # Chaining Feb 29 + 1 month would give Mar 29; the start's anchor gives Mar 31.
    result = settle(
        start_date=D(2024, 1, 31), monthly_fee_jpy=1, received_on=D(2024, 2, 1),
        effective_date=D(2024, 3, 20), paid_billing_dates=frozenset(),
    )
    assert result.paid_through == billing_date(D(2024, 1, 31), 2) == D(2024, 3, 31)


@pytest.mark.parametrize(("status", "void", "announce"), [
    (None, False, False),  # billing never settled the request (rejected, or never accepted)
    ("awaiting_contract", True, False),  # never announced: voided quietly
    ("issued", True, True),
    ("voided", False, False),  # a second withdrawal: voiding twice is once
])
def test_what_a_withdrawal_does_to_the_settlement(status, void: bool, announce: bool) -> None:
    assert voiding(status) == Voiding(void=void, announce=announce)


@given(st.sampled_from([None, "awaiting_contract", "issued", "voided"]), st.integers(1, 4))
def test_withdrawals_void_once_and_announce_only_an_issued_settlement(status, withdrawals: int) -> None:
    initial, voided, announced = status, 0, 0
    for _ in range(withdrawals):
        outcome = voiding(status)
        assert outcome.void or not outcome.announce, "only what is voided is announced"
        if outcome.void:
            voided, announced, status = voided + 1, announced + outcome.announce, "voided"
    assert voided == (initial in ("awaiting_contract", "issued"))
    assert announced == (initial == "issued")
