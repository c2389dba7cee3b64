"""intake's rules: a submission key acts once, who may still withdraw, status only moves forward."""

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.domain import (ENDED, AskedBefore, AskWithdrawal, IdempotencyConflict, Refusal,
                                    RefuseWithdrawal, answer_withdrawal, may_become, replayed_request,
                                    submission_digest, withdrawal_refusal)
from shared.vocabulary import RequestStatus as S

EFFECTIVE = date(2026, 6, 30)


def test_the_same_body_under_a_key_is_the_first_request() -> None:
    digest = submission_digest({"contract_id": "C-1", "reason": "TOO_DIFFICULT"})
    assert replayed_request(key_field="submission_id", first_request_id="R-1", first_digest=digest,
                            digest=submission_digest({"reason": "TOO_DIFFICULT", "contract_id": "C-1"})) == "R-1"


def test_another_body_under_a_key_is_a_conflict_naming_the_field() -> None:
    with pytest.raises(IdempotencyConflict, match="^Idempotency-Key: already used for request R-1 with a different body$"):
        replayed_request(key_field="Idempotency-Key", first_request_id="R-1", first_digest=submission_digest({"a": 1}),
                         digest=submission_digest({"a": 2}))


_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=5)


@given(st.dictionaries(_TEXT, st.integers(min_value=-2**53, max_value=2**53) | _TEXT, max_size=6))
def test_the_digest_ignores_field_order(form: dict) -> None:
    assert submission_digest(form) == submission_digest(dict(reversed(list(form.items()))))


@pytest.mark.parametrize(
    ("status", "effective_date", "today", "why"),
    [
        (S.received, None, EFFECTIVE, None),
        (S.accepted, EFFECTIVE, EFFECTIVE - timedelta(days=1), None),
        (S.accepted, EFFECTIVE, EFFECTIVE, "the effective date has come: the contract has ended"),
        (S.accepted, EFFECTIVE, EFFECTIVE + timedelta(days=3), "the effective date has come: the contract has ended"),
        (S.rejected, None, EFFECTIVE, "request is rejected"),
        (S.withdrawn, EFFECTIVE, EFFECTIVE, "request is withdrawn"),
        (S.completed, EFFECTIVE, EFFECTIVE, "request is completed"),
    ],
)
def test_withdrawal_refusal(status: S, effective_date, today: date, why) -> None:
    assert withdrawal_refusal(status, effective_date, today=today) == why


@pytest.mark.parametrize(
    ("new", "from_"),
    [
        (S.received, set()),
        (S.accepted, {S.received}),
        (S.rejected, {S.received}),
        (S.withdrawn, {S.received, S.accepted}),
        (S.completed, {S.received, S.accepted}),
    ],
)
def test_the_statuses_a_request_may_move_from(new: S, from_: set) -> None:
    assert may_become(new) == from_


@given(st.lists(st.sampled_from(list(S)), max_size=12))
def test_status_only_moves_forward_and_an_end_is_final(events: list) -> None:
    status = S.received
    for new in events:
        if status in may_become(new):
            assert new != S.received, "nothing moves back to received"
            status = new
        if status in ENDED:
            assert all(status not in may_become(s) for s in S), "an ended request never moves again"


def _without_an_offer(status: S, effective_date, today: date, asked: bool):
    """A withdrawal asked without an offer (SPEC section 2); taking one is tested in test_retention_domain."""
    return answer_withdrawal(status=status, effective_date=effective_date, today=today, offers=(), asked=asked,
                             asked_with=None, taken_offer=None)


_DATE_COME = "the effective date has come: the contract has ended"


@pytest.mark.parametrize(("status", "effective_date", "asked", "answer"), [
    (S.received, None, False, AskWithdrawal(None)),  # before the decision: eligibility handles the two in order
    (S.accepted, EFFECTIVE, False, AskWithdrawal(None)),
    (S.accepted, EFFECTIVE, True, AskedBefore()),  # asking twice is one withdrawal
    (S.received, None, True, AskedBefore()),
    (S.accepted, EFFECTIVE - timedelta(days=1), False, RefuseWithdrawal(_DATE_COME, Refusal.date_come)),
    (S.withdrawn, EFFECTIVE, True, RefuseWithdrawal("request is withdrawn", Refusal.ended)),
    (S.completed, EFFECTIVE, False, RefuseWithdrawal("request is completed", Refusal.ended)),
    (S.rejected, None, False, RefuseWithdrawal("request is rejected", Refusal.ended)),
])
def test_answer_withdrawal(status: S, effective_date, asked: bool, answer) -> None:
    assert _without_an_offer(status, effective_date, EFFECTIVE - timedelta(days=1), asked) == answer


@given(st.sampled_from(list(S)), st.none() | st.dates(), st.dates())
def test_a_withdrawal_is_asked_once_and_refused_exactly_when_the_refusal_says(status: S, effective_date, today) -> None:
    first = _without_an_offer(status, effective_date, today, asked=False)
    again = _without_an_offer(status, effective_date, today, asked=True)
    why = withdrawal_refusal(status, effective_date, today=today)
    refused = RefuseWithdrawal(why, Refusal.ended if status in ENDED else Refusal.date_come) if why else None
    assert first == (refused or AskWithdrawal(None))
    assert again == (refused or AskedBefore())
