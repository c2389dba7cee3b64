from datetime import date, timedelta
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.eligibility.domain import (
    DEFAULT_OFFER_POLICY,
    MINIMUM_TERM_MONTHS,
    NOTICE_PERIOD,
    Accepted,
    ContractTerms,
    Offer,
    Reason,
    Rejected,
    RejectionCode,
    can_withdraw,
    decide,
    earliest_effective_date,
    is_due_for_completion,
    offers_for,
    parse_offer_policy,
)

C = RejectionCode
START = date(2024, 4, 1)  # first anniversary 2025-04-01
CONTRACT = ContractTerms(contract_id="C-1", start_date=START, monthly_fee_jpy=12_000)
# Received well after the anniversary, so only the notice period binds.
LATE_RECEIPT = date(2025, 6, 1)


def _decide(**overrides: object):
    kwargs: dict[str, object] = dict(
        contract=CONTRACT,
        received_on=LATE_RECEIPT,
        desired_effective_date=None,
        has_pending=False,
        reason=Reason.NO_LONGER_USED,
    )
    kwargs.update(overrides)
    return decide(**kwargs)  # type: ignore[arg-type]


def test_constants() -> None:
    assert NOTICE_PERIOD == timedelta(days=45)
    assert MINIMUM_TERM_MONTHS == 12


def test_enum_values() -> None:
    assert [c.value for c in RejectionCode] == [
        "CONTRACT_NOT_FOUND",
        "CONTRACT_ENDED",
        "MINIMUM_TERM",
        "NOTICE_PERIOD",
        "ALREADY_PENDING",
    ]
    assert {r.value for r in Reason} == {
        "INITIAL_SETUP_FAILED",
        "TOO_DIFFICULT",
        "BUSINESS_CLOSED",
        "LINE_ACCOUNT_UNAVAILABLE",
        "NOT_USEFUL_FOR_BUSINESS",
        "SWITCHING_TOOL",
        "NO_LONGER_USED",
    }
    assert [o.value for o in Offer] == ["setup_support", "guided_training", "consultation", "downgrade", "discount"]


@pytest.mark.parametrize(
    ("start", "received_on", "expected"),
    [
        pytest.param(date(2024, 4, 1), date(2025, 6, 1), date(2025, 7, 16), id="notice-binds"),
        pytest.param(date(2024, 4, 1), date(2024, 5, 1), date(2025, 4, 1), id="anniversary-binds"),
        pytest.param(date(2024, 4, 1), date(2025, 2, 15), date(2025, 4, 1), id="both-equal"),
        pytest.param(date(2024, 2, 29), date(2024, 3, 1), date(2025, 2, 28), id="leap-day-start"),
    ],
)
def test_earliest_effective_date(start: date, received_on: date, expected: date) -> None:
    assert earliest_effective_date(start, received_on) == expected


@pytest.mark.parametrize(
    ("days_after_receipt", "expected"),
    [
        pytest.param(44, Rejected((C.NOTICE_PERIOD,), date(2025, 7, 16)), id="44-days-rejected"),
        pytest.param(45, Accepted(date(2025, 7, 16), date(2025, 4, 1), (Offer.downgrade,)), id="45-days-accepted"),
        pytest.param(46, Accepted(date(2025, 7, 17), date(2025, 4, 1), (Offer.downgrade,)), id="46-days-accepted"),
    ],
)
def test_notice_period_boundary(days_after_receipt: int, expected: object) -> None:
    desired = LATE_RECEIPT + timedelta(days=days_after_receipt)
    assert _decide(desired_effective_date=desired) == expected


@pytest.mark.parametrize(
    ("start", "anniversary", "desired", "expected_codes"),
    [
        pytest.param(date(2024, 9, 1), date(2025, 9, 1), date(2025, 9, 1), (), id="on-anniversary"),
        pytest.param(date(2024, 9, 1), date(2025, 9, 1), date(2025, 8, 31), (C.MINIMUM_TERM,), id="day-before-anniversary"),
        pytest.param(date(2024, 2, 29), date(2025, 2, 28), date(2025, 2, 28), (), id="leap-start-on-feb28"),
        pytest.param(date(2024, 2, 29), date(2025, 2, 28), date(2025, 2, 27), (C.MINIMUM_TERM,), id="leap-start-day-before"),
        pytest.param(date(2024, 8, 31), date(2025, 8, 31), date(2025, 8, 31), (), id="start-31st-on-anniversary"),
        pytest.param(date(2024, 8, 31), date(2025, 8, 31), date(2025, 8, 30), (C.MINIMUM_TERM,), id="start-31st-day-before"),
        pytest.param(date(2024, 8, 30), date(2025, 8, 30), date(2025, 8, 29), (C.MINIMUM_TERM,), id="start-30th-day-before"),
        pytest.param(date(2024, 8, 29), date(2025, 8, 29), date(2025, 8, 29), (), id="start-29th-on-anniversary"),
    ],
)
def test_minimum_term_boundary(
    start: date, anniversary: date, desired: date, expected_codes: tuple[RejectionCode, ...]
) -> None:
    contract = ContractTerms("C-2", start, 5_000)
    received_on = date(2025, 1, 10)  # notice ends 2025-02-24, before every anniversary here
    decision = _decide(contract=contract, received_on=received_on, desired_effective_date=desired)
    if expected_codes:
        assert decision == Rejected(expected_codes, anniversary)
    else:
        assert decision == Accepted(desired, anniversary, (Offer.downgrade,))


@pytest.mark.parametrize(
    ("contract", "received_on", "desired", "has_pending", "expected"),
    [
        pytest.param(None, LATE_RECEIPT, None, True, Rejected((C.CONTRACT_NOT_FOUND,), None), id="not-found"),
        pytest.param(
            ContractTerms("C-1", START, 12_000, ended=True),
            LATE_RECEIPT,
            date(2024, 5, 1),
            True,
            Rejected((C.CONTRACT_ENDED,), None),
            id="ended-wins-over-everything",
        ),
        pytest.param(
            CONTRACT, date(2024, 6, 1), date(2024, 7, 1), False,
            Rejected((C.MINIMUM_TERM, C.NOTICE_PERIOD), date(2025, 4, 1)),
            id="minimum-term+notice",
        ),
        pytest.param(
            CONTRACT, date(2024, 6, 1), date(2024, 12, 1), False,
            Rejected((C.MINIMUM_TERM,), date(2025, 4, 1)),
            id="minimum-term-only",
        ),
        pytest.param(
            CONTRACT, LATE_RECEIPT, None, True,
            Rejected((C.ALREADY_PENDING,), date(2025, 7, 16)),
            id="pending-only",
        ),
        pytest.param(
            CONTRACT, LATE_RECEIPT, date(2025, 7, 1), True,
            Rejected((C.NOTICE_PERIOD, C.ALREADY_PENDING), date(2025, 7, 16)),
            id="notice+pending",
        ),
        pytest.param(
            CONTRACT, date(2024, 6, 1), date(2024, 7, 1), True,
            Rejected((C.MINIMUM_TERM, C.NOTICE_PERIOD, C.ALREADY_PENDING), date(2025, 4, 1)),
            id="all-three",
        ),
        pytest.param(
            CONTRACT, date(2025, 3, 1), date(2025, 3, 31), False,
            Rejected((C.MINIMUM_TERM, C.NOTICE_PERIOD), date(2025, 4, 15)),
            id="near-anniversary-both",
        ),
    ],
)
def test_rejection_codes(
    contract: ContractTerms | None, received_on: date, desired: date | None, has_pending: bool, expected: Rejected
) -> None:
    assert (
        _decide(contract=contract, received_on=received_on, desired_effective_date=desired, has_pending=has_pending)
        == expected
    )


def test_absent_desired_date_uses_earliest() -> None:
    assert _decide(received_on=date(2024, 6, 1)) == Accepted(date(2025, 4, 1), date(2025, 4, 1), (Offer.downgrade,))


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        pytest.param(Reason.INITIAL_SETUP_FAILED, (Offer.setup_support,), id="setup"),
        pytest.param(Reason.TOO_DIFFICULT, (Offer.guided_training,), id="difficult"),
        pytest.param(Reason.NOT_USEFUL_FOR_BUSINESS, (Offer.consultation, Offer.downgrade), id="not-useful"),
        pytest.param(Reason.SWITCHING_TOOL, (Offer.consultation, Offer.discount), id="switching"),
        pytest.param(Reason.NO_LONGER_USED, (Offer.downgrade,), id="unused"),
        pytest.param(Reason.BUSINESS_CLOSED, (), id="closed"),
        pytest.param(Reason.LINE_ACCOUNT_UNAVAILABLE, (), id="line-unavailable"),
    ],
)
def test_default_offers(reason: Reason, expected: tuple[Offer, ...]) -> None:
    assert offers_for(reason) == expected
    decision = _decide(reason=reason)
    assert isinstance(decision, Accepted) and decision.offers == expected


def test_default_policy_is_read_only() -> None:
    assert isinstance(DEFAULT_OFFER_POLICY, MappingProxyType)
    with pytest.raises(TypeError):
        DEFAULT_OFFER_POLICY[Reason.BUSINESS_CLOSED] = (Offer.discount,)  # type: ignore[index]


def test_custom_policy_is_used_and_missing_reason_gets_none() -> None:
    policy = parse_offer_policy({"BUSINESS_CLOSED": ["discount"]})
    assert offers_for(Reason.BUSINESS_CLOSED, policy) == (Offer.discount,)
    assert offers_for(Reason.TOO_DIFFICULT, policy) == ()
    decision = _decide(reason=Reason.BUSINESS_CLOSED, offer_policy=policy)
    assert isinstance(decision, Accepted) and decision.offers == (Offer.discount,)


def test_parse_offer_policy_round_trips_default() -> None:
    raw = {r.value: [o.value for o in offers] for r, offers in DEFAULT_OFFER_POLICY.items()}
    assert dict(parse_offer_policy(raw)) == dict(DEFAULT_OFFER_POLICY)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param({"TOO_HARD": ["discount"]}, "TOO_HARD", id="unknown-reason"),
        pytest.param({"TOO_DIFFICULT": ["free_lunch"]}, "free_lunch", id="unknown-offer"),
        pytest.param({"TOO_DIFFICULT": "discount"}, "must be a list", id="string-not-list"),
        pytest.param({"TOO_DIFFICULT": ["discount", "discount"]}, "twice", id="duplicate-offer"),
        pytest.param({"too_difficult": []}, "too_difficult", id="wrong-case-reason"),
    ],
)
def test_parse_offer_policy_rejects_bad_input(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_offer_policy(raw)


def test_contract_terms_rejects_negative_fee() -> None:
    with pytest.raises(ValueError):
        ContractTerms("C-1", START, -1)


@pytest.mark.parametrize(
    ("today", "withdrawable", "due"),
    [
        pytest.param(date(2025, 7, 15), True, False, id="day-before"),
        pytest.param(date(2025, 7, 16), False, True, id="on-effective-date"),
        pytest.param(date(2025, 7, 17), False, True, id="day-after"),
    ],
)
def test_withdrawal_and_completion(today: date, withdrawable: bool, due: bool) -> None:
    effective = date(2025, 7, 16)
    assert can_withdraw(effective_date=effective, today=today) is withdrawable
    assert is_due_for_completion(effective_date=effective, today=today) is due


# --- properties -------------------------------------------------------------------

starts = st.dates(min_value=date(2015, 1, 1), max_value=date(2035, 12, 31))
reasons = st.sampled_from(list(Reason))


@given(start=starts, received_offset=st.integers(-400, 1500), desired_offset=st.integers(-800, 800),
       pending=st.booleans(), reason=reasons)
def test_never_accepts_before_earliest(
    start: date, received_offset: int, desired_offset: int, pending: bool, reason: Reason
) -> None:
    received_on = start + timedelta(days=received_offset)
    earliest = earliest_effective_date(start, received_on)
    desired = earliest + timedelta(days=desired_offset)
    decision = decide(
        contract=ContractTerms("C", start, 1_000), received_on=received_on,
        desired_effective_date=desired, has_pending=pending, reason=reason,
    )
    if isinstance(decision, Accepted):
        assert decision.effective_date == desired >= earliest
    else:
        assert decision.earliest_effective_date == earliest
        assert list(decision.codes) == sorted(set(decision.codes), key=list(RejectionCode).index)
    # Accepted exactly when the date is allowed and nothing is pending.
    assert isinstance(decision, Accepted) == (desired >= earliest and not pending)


@given(start=starts, received_offset=st.integers(-400, 1500), reason=reasons)
def test_absent_desired_date_always_accepts_earliest(start: date, received_offset: int, reason: Reason) -> None:
    received_on = start + timedelta(days=received_offset)
    decision = decide(
        contract=ContractTerms("C", start, 1_000), received_on=received_on,
        desired_effective_date=None, has_pending=False, reason=reason,
    )
    assert isinstance(decision, Accepted)
    assert decision.effective_date == earliest_effective_date(start, received_on)
    assert decision.offers == offers_for(reason)
