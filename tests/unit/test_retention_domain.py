"""The retention loop's pure rules (SPEC section 6): the holdout, and whether an offer can be taken."""

from __future__ import annotations

from collections import Counter
from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.eligibility.domain import (Accepted, AlreadyWithdrawn, CancellationState, CannotWithdraw, ContractTerms,
                                         Offer, Reason, Rejected, RejectionCode, WithdrawNow, decide,
                                         decide_withdrawal, hold_out, in_holdout, withdrawal_refusal)
from services.intake.domain import AskedBefore, AskWithdrawal, Refusal, RefuseWithdrawal, answer_withdrawal
from shared.vocabulary import RequestStatus

TODAY = date(2025, 6, 1)
LATER = TODAY + timedelta(days=45)
OFFERS = ("consultation", "discount")
ids = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-", min_size=1, max_size=40)
offers = st.sampled_from([o.value for o in Offer])
statuses = st.sampled_from(["received", "accepted", "rejected", "withdrawn", "completed"])


# --- holdout ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("percent", [-1, 51, 100])
def test_holdout_percent_outside_0_to_50_is_refused(percent):
    with pytest.raises(ValueError, match="0-50"):
        in_holdout("C-1", percent)


def test_holdout_zero_holds_out_nobody_and_fifty_about_half():
    contracts = [f"C-{n:05d}" for n in range(4000)]
    assert not any(in_holdout(c, 0) for c in contracts)
    held = sum(in_holdout(c, 50) for c in contracts)
    assert 1800 < held < 2200  # SHA-256 buckets are uniform: 2000 +- 6 standard deviations (31.6)
    assert 150 < sum(in_holdout(c, 5) for c in contracts) < 260  # 200 expected


@given(contract=ids, low=st.integers(0, 50), high=st.integers(0, 50))
def test_holdout_is_deterministic_and_grows_with_the_percent(contract, low, high):
    low, high = sorted((low, high))
    assert in_holdout(contract, low) == in_holdout(contract, low)
    assert not in_holdout(contract, low) or in_holdout(contract, high)  # a bigger holdout contains the smaller


def _held_and_not(percent: int) -> tuple[str, str]:
    contracts = [f"C-{n}" for n in range(200)]
    return (next(c for c in contracts if in_holdout(c, percent)), next(c for c in contracts if not in_holdout(c, percent)))


@pytest.mark.parametrize(("reason", "in_group", "offers", "holdout"), [
    (Reason.SWITCHING_TOOL, True, (), True),
    (Reason.SWITCHING_TOOL, False, (Offer.consultation, Offer.discount), False),
    (Reason.TOO_DIFFICULT, True, (), True),
    # Nothing to withhold: not held out, so the holdout's save rate is not diluted by reasons no offer fits.
    (Reason.BUSINESS_CLOSED, True, (), False),
    (Reason.LINE_ACCOUNT_UNAVAILABLE, False, (), False),
])
def test_an_acceptance_in_the_holdout_carries_no_offers(reason, in_group, offers, holdout):
    held, kept = _held_and_not(20)
    contract = held if in_group else kept
    decision = decide(contract=ContractTerms(contract, date(2020, 1, 1), 1000), received_on=TODAY,
                      desired_effective_date=None, has_pending=False, reason=reason)
    out = hold_out(decision, contract_id=contract, percent=20)
    assert isinstance(out, Accepted) and (out.offers, out.holdout) == (offers, holdout)
    assert out.effective_date == decision.effective_date  # the holdout changes nothing else


def test_a_rejection_is_never_held_out():
    held, _ = _held_and_not(50)
    rejected = Rejected((RejectionCode.NOTICE_PERIOD,), LATER)
    assert hold_out(rejected, contract_id=held, percent=50) is rejected


@given(contract=ids, percent=st.integers(0, 50), reason=st.sampled_from(list(Reason)))
def test_holdout_only_ever_removes_offers(contract, percent, reason):
    decision = decide(contract=ContractTerms(contract, date(2020, 1, 1), 1000), received_on=TODAY,
                      desired_effective_date=None, has_pending=False, reason=reason)
    out = hold_out(decision, contract_id=contract, percent=percent)
    assert out.holdout == (bool(decision.offers) and in_holdout(contract, percent))
    assert out.offers == (() if out.holdout else decision.offers)


# --- can an offer be taken (eligibility) -----------------------------------------------------------------

@pytest.mark.parametrize(("status", "effective", "offer", "withdrawn_with", "expected"), [
    ("accepted", LATER, "discount", None, WithdrawNow(Offer.discount)),
    ("accepted", LATER, None, None, WithdrawNow(None)),
    ("accepted", TODAY + timedelta(days=1), "consultation", None, WithdrawNow(Offer.consultation)),
    ("accepted", TODAY, "discount", None, CannotWithdraw("the effective date 2025-06-01 has come: the contract has ended")),
    ("accepted", TODAY - timedelta(days=3), None, None, CannotWithdraw("the effective date 2025-05-29 has come: the contract has ended")),
    ("accepted", LATER, "downgrade", None, CannotWithdraw("offer downgrade is not among the request's offers (consultation, discount)")),
    ("withdrawn", LATER, "discount", "discount", AlreadyWithdrawn()),  # the same take again
    ("withdrawn", LATER, None, None, AlreadyWithdrawn()),  # withdrawn twice without an offer
    ("withdrawn", LATER, "consultation", "discount", CannotWithdraw("the request is withdrawn")),
    ("withdrawn", LATER, "discount", None, CannotWithdraw("the request is withdrawn")),
    ("rejected", None, "discount", None, CannotWithdraw("the request is rejected")),
    ("completed", TODAY, None, None, CannotWithdraw("the request is completed")),
])
def test_decide_withdrawal(status, effective, offer, withdrawn_with, expected):
    state = CancellationState(status, effective, OFFERS, withdrawn_with)
    assert decide_withdrawal(state, today=TODAY, taken_offer=offer) == expected


def test_no_offer_can_be_taken_from_a_request_that_carried_none():
    why = withdrawal_refusal(CancellationState("accepted", LATER, ()), today=TODAY, taken_offer="discount")
    assert why == "offer discount is not among the request's offers (none)"
    assert decide_withdrawal(None, today=TODAY, taken_offer="discount") == CannotWithdraw("unknown request")


@given(status=statuses, days=st.integers(-30, 60), offer=st.none() | offers, before=st.none() | offers)
def test_an_offer_is_taken_only_from_an_accepted_request_before_its_date_among_its_offers(status, days, offer, before):
    decision = decide_withdrawal(CancellationState(status, TODAY + timedelta(days=days), OFFERS, before), today=TODAY,
                                 taken_offer=offer)
    if isinstance(decision, WithdrawNow):
        assert status == "accepted" and days > 0 and (offer is None or offer in OFFERS)
        assert decision.taken_offer == offer
    elif isinstance(decision, AlreadyWithdrawn):
        assert status == "withdrawn" and offer == before
    else:
        assert not (status == "accepted" and days > 0 and (offer is None or offer in OFFERS))


# --- may intake ask for it (HTTP 202 / 409, a submission acted on or dead-lettered) ---------------------

@pytest.mark.parametrize(("status", "asked", "asked_with", "offer", "expected"), [
    ("accepted", False, None, "discount", AskWithdrawal("discount")),
    ("accepted", True, "discount", "discount", AskedBefore()),  # taking the same offer twice is one take
    ("withdrawn", True, "discount", "discount", AskedBefore()),
    ("accepted", True, "discount", "consultation",
     RefuseWithdrawal("the request is already being withdrawn with offer discount", Refusal.already_withdrawing)),
    ("accepted", True, None, "discount",
     RefuseWithdrawal("the request is already being withdrawn without an offer", Refusal.already_withdrawing)),
    ("accepted", False, None, "downgrade",
     RefuseWithdrawal("offer downgrade is not among the request's offers (consultation, discount)", Refusal.not_offered)),
    ("received", False, None, "discount", RefuseWithdrawal("the request is received", Refusal.undecided)),
    ("rejected", False, None, "discount", RefuseWithdrawal("the request is rejected", Refusal.ended)),
    ("completed", False, None, "discount", RefuseWithdrawal("the request is completed", Refusal.ended)),
    # without an offer: as SPEC section 2 always had it
    ("received", False, None, None, AskWithdrawal(None)),
    ("accepted", False, None, None, AskWithdrawal(None)),
    ("accepted", True, "discount", None, AskedBefore()),
    ("withdrawn", True, None, None, RefuseWithdrawal("request is withdrawn", Refusal.ended)),
    ("completed", False, None, None, RefuseWithdrawal("request is completed", Refusal.ended)),
])
def test_answer_withdrawal(status, asked, asked_with, offer, expected):
    assert answer_withdrawal(status=status, effective_date=LATER, today=TODAY, offers=OFFERS, asked=asked,
                             asked_with=asked_with, taken_offer=offer) == expected


def test_a_refusal_names_the_field_it_is_about():
    """A dead letter's reason starts with the field: the offer when it is the offer that cannot be taken."""
    about = {r: RefuseWithdrawal("why", r).field for r in Refusal}
    assert about == {Refusal.ended: "request_id", Refusal.undecided: "request_id", Refusal.date_come: "request_id",
                     Refusal.not_offered: "taken_offer", Refusal.already_withdrawing: "taken_offer"}


@pytest.mark.parametrize("offer", [None, "discount"])
def test_answer_withdrawal_on_and_after_the_effective_date(offer):
    for effective in (TODAY, TODAY - timedelta(days=1)):
        answer = answer_withdrawal(status="accepted", effective_date=effective, today=TODAY, offers=OFFERS,
                                   asked=False, asked_with=None, taken_offer=offer)
        assert isinstance(answer, RefuseWithdrawal) and "has come" in answer.why and answer.field == "request_id"
        assert answer.refusal == Refusal.date_come


@given(status=statuses, days=st.integers(-30, 60), offer=offers, asked=st.booleans(), before=st.none() | offers)
def test_intake_never_asks_what_eligibility_would_refuse(status, days, offer, asked, before):
    """Whatever intake asks eligibility for, eligibility's own rule takes (intake refuses early, never late)."""
    effective = TODAY + timedelta(days=days)
    answer = answer_withdrawal(status=status, effective_date=effective, today=TODAY, offers=OFFERS, asked=asked,
                               asked_with=before if asked else None, taken_offer=offer)
    if isinstance(answer, AskWithdrawal):
        assert isinstance(decide_withdrawal(CancellationState(status, effective, OFFERS), today=TODAY,
                                            taken_offer=offer), WithdrawNow)


def test_holdout_buckets_are_spread_over_every_percent():
    buckets = Counter(next(p for p in range(1, 51) if in_holdout(f"C-{n}", p)) for n in range(3000)
                      if in_holdout(f"C-{n}", 50))
    assert set(buckets) == set(range(1, 51))  # every bucket 0..49 is reached by some contract


def test_the_page_says_every_refusal_in_its_own_words():
    """The customer's page words each kind of 409 (a take or a withdrawal refused) differently, naming the offer."""
    from services.intake.page.wording import refusal

    said = {kind: refusal(kind, status=RequestStatus.withdrawn if kind is Refusal.ended else RequestStatus.accepted,
                          taking="consultation", withdrawing_with="discount", effective_date=TODAY)
            for kind in Refusal}
    assert len({why for _, why in said.values()}) == len(Refusal)
    assert {heading for heading, _ in said.values()} == {"ご提案をお受けできませんでした"}
    assert "個別の活用相談" in said[Refusal.not_offered][1] and "継続割引" in said[Refusal.already_withdrawing][1]
    assert "撤回しました" in said[Refusal.ended][1] and "月" in said[Refusal.date_come][1]
    assert refusal(Refusal.ended, status=RequestStatus.completed, taking=None, withdrawing_with=None,
                   effective_date=TODAY)[0] == "撤回できませんでした"
    plain = refusal(Refusal.already_withdrawing, status=RequestStatus.accepted, taking="discount",
                    withdrawing_with=None, effective_date=TODAY)[1]
    assert "ご提案なし" in plain
    assert "free_beer" in refusal(Refusal.not_offered, status=RequestStatus.accepted, taking="free_beer",
                                  withdrawing_with=None, effective_date=TODAY)[1]
