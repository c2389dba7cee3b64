"""eligibility's rules beyond the decision: who can have a pending cancellation, withdrawal, completion."""

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.eligibility.domain import (CancellationState, ContractTerms, Reason, RejectionCode, can_withdraw,
                                         completion_cutoff, contract_is_live, decide, is_due_for_completion,
                                         withdrawal_refusal)

LIVE = ContractTerms(contract_id="C-1", start_date=date(2024, 4, 1), monthly_fee_jpy=1000)
ENDED = ContractTerms(contract_id="C-1", start_date=date(2024, 4, 1), monthly_fee_jpy=1000, ended=True)
EFFECTIVE = date(2026, 6, 30)


@pytest.mark.parametrize(("contract", "live"), [(None, False), (ENDED, False), (LIVE, True)])
def test_only_a_live_contract_can_have_a_pending_cancellation(contract, live) -> None:
    assert contract_is_live(contract) is live


@given(has_pending=st.booleans())
def test_a_pending_cancellation_never_changes_the_answer_for_an_unknown_or_ended_contract(has_pending: bool) -> None:
    for contract, code in ((None, RejectionCode.CONTRACT_NOT_FOUND), (ENDED, RejectionCode.CONTRACT_ENDED)):
        decision = decide(contract=contract, received_on=date(2026, 1, 1), desired_effective_date=None,
                          has_pending=has_pending, reason=Reason.NO_LONGER_USED)
        assert decision.codes == (code,)


@pytest.mark.parametrize(
    ("cancellation", "today", "why"),
    [
        pytest.param(None, date(2026, 6, 1), "unknown request", id="unknown"),
        pytest.param(CancellationState("rejected", None), date(2026, 6, 1), "the request is rejected", id="rejected"),
        pytest.param(CancellationState("withdrawn", EFFECTIVE), date(2026, 6, 1), "the request is withdrawn",
                     id="withdrawn"),
        pytest.param(CancellationState("completed", EFFECTIVE), date(2026, 7, 1), "the request is completed",
                     id="completed"),
        pytest.param(CancellationState("accepted", EFFECTIVE), EFFECTIVE,
                     "the effective date 2026-06-30 has come: the contract has ended", id="on-the-date"),
        pytest.param(CancellationState("accepted", EFFECTIVE), EFFECTIVE - timedelta(days=1), None, id="day-before"),
    ],
)
def test_withdrawal_refusal(cancellation, today: date, why: str | None) -> None:
    assert withdrawal_refusal(cancellation, today=today) == why


@given(effective=st.dates(min_value=date(2020, 1, 1), max_value=date(2040, 1, 1)),
       offset=st.integers(min_value=-400, max_value=400))
def test_withdrawal_and_completion_split_time_at_the_effective_date(effective: date, offset: int) -> None:
    today = effective + timedelta(days=offset)
    accepted = CancellationState("accepted", effective)
    # Exactly one of the two holds on any day: withdrawable before, completed from the effective date on.
    assert (withdrawal_refusal(accepted, today=today) is None) is can_withdraw(effective_date=effective, today=today)
    assert can_withdraw(effective_date=effective, today=today) is not is_due_for_completion(
        effective_date=effective, today=today)
    assert is_due_for_completion(effective_date=effective, today=today) is (effective <= completion_cutoff(today))
