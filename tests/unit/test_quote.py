"""The quote is the decision and the settlement a submission with the same inputs then gets.

Pure level: the quote (intake) against eligibility's decide and billing's settle, as their handlers
call them, for random contracts, payments, dates, reasons and pending/ended states.
"""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.billing.domain import settle
from services.eligibility.domain import (DEFAULT_OFFER_POLICY, Accepted, ContractTerms, decide, hold_out, in_holdout,
                                         parse_offer_policy)
from services.intake.domain import quote
from services.intake.quote import quote_view
from shared.contract_calendar import add_months
from shared.events import ChargeLine, SettlementIssued
from shared.vocabulary import Offer, Reason, RejectionCode

policies = st.one_of(
    st.just(DEFAULT_OFFER_POLICY),
    st.dictionaries(st.sampled_from([r.value for r in Reason]),
                    st.lists(st.sampled_from([o.value for o in Offer]), unique=True, max_size=3)).map(parse_offer_policy))


@st.composite
def cases(draw):
    start = draw(st.dates(date(2019, 1, 1), date(2027, 12, 31)))
    received_on = start + timedelta(days=draw(st.integers(0, 1500)))
    desired = draw(st.one_of(st.none(), st.integers(-60, 600).map(lambda d: received_on + timedelta(days=d))))
    fee = draw(st.integers(0, 200_000))
    # Payments on some billing dates around the cancellation (and a few that are not billing dates).
    billing = [add_months(start, n) for n in range(0, 80)]
    paid = frozenset(draw(st.lists(st.sampled_from(billing), max_size=8))) | frozenset(
        draw(st.lists(st.dates(start, start + timedelta(days=2500)), max_size=2)))
    contract_id = draw(st.text("ABCDEF0123456789-", min_size=1, max_size=12).map(lambda t: "C-" + t))
    return dict(contract=ContractTerms(contract_id=contract_id, start_date=start, monthly_fee_jpy=fee,
                                       ended=draw(st.booleans())),
                received_on=received_on, desired_effective_date=desired, has_pending=draw(st.booleans()),
                reason=draw(st.sampled_from(list(Reason))), paid_billing_dates=paid, offer_policy=draw(policies),
                holdout_percent=draw(st.sampled_from([0, 0, 5, 50])))


@settings(max_examples=400, deadline=None)
@given(cases())
def test_the_quote_is_the_decision_and_the_settlement_that_follow(case) -> None:
    view = quote_view("C-1", quote(**case)).model_dump(mode="json")
    # As eligibility's handler decides: decide, then the holdout.
    decision = hold_out(decide(contract=case["contract"], received_on=case["received_on"],
                               desired_effective_date=case["desired_effective_date"], has_pending=case["has_pending"],
                               reason=case["reason"], offer_policy=case["offer_policy"]),
                        contract_id=case["contract"].contract_id, percent=case["holdout_percent"])
    if isinstance(decision, Accepted):
        # What billing then issues for that acceptance, on the wire.
        s = settle(start_date=case["contract"].start_date, monthly_fee_jpy=case["contract"].monthly_fee_jpy,
                   received_on=case["received_on"], effective_date=decision.effective_date,
                   paid_billing_dates=case["paid_billing_dates"])
        issued = SettlementIssued(request_id="R", contract_id="C-1", total_jpy=s.total_jpy, paid_through=s.paid_through,
                                  charges=tuple(ChargeLine(billing_date=c.billing_date, amount_jpy=c.amount_jpy)
                                                for c in s.charges)).model_dump(mode="json")
        assert view["codes"] == []
        assert view["effective_date"] == decision.effective_date.isoformat() == view["access_ends_on"]
        assert view["first_anniversary"] == decision.first_anniversary.isoformat()
        assert view["offers"] == [o.value for o in decision.offers]
        assert {k: view[k] for k in ("charges", "total_jpy", "refund_jpy", "paid_through")} == \
            {k: issued[k] for k in ("charges", "total_jpy", "refund_jpy", "paid_through")}
    else:
        assert view["codes"] == [c.value for c in decision.codes]
        assert view["earliest_effective_date"] == (decision.earliest_effective_date and
                                                   decision.earliest_effective_date.isoformat())
        assert (view["charges"], view["total_jpy"], view["paid_through"], view["offers"]) == ([], 0, None, [])
        assert view["access_ends_on"] is None


START = date(2024, 1, 31)
CONTRACT = ContractTerms(contract_id="C-1", start_date=START, monthly_fee_jpy=12_000)


def _quote(**overrides):
    kwargs = dict(contract=CONTRACT, received_on=date(2026, 12, 1), desired_effective_date=None, has_pending=False,
                  reason=Reason.SWITCHING_TOOL, paid_billing_dates=frozenset())
    return quote(**(kwargs | overrides))


def test_earliest_date_charges_and_paid_through_for_a_month_end_start() -> None:
    q = _quote()
    assert q.earliest_effective_date == q.effective_date == date(2027, 1, 15)
    assert [c.billing_date for c in q.settlement.charges] == [date(2026, 12, 31)]
    assert q.settlement.total_jpy == 12_000 and q.settlement.refund_jpy == 0
    assert q.settlement.paid_through == date(2027, 1, 31)
    assert q.offers == (Offer.consultation, Offer.discount) and q.access_ends_on == date(2027, 1, 15)


def test_a_paid_billing_date_is_not_quoted_again() -> None:
    q = _quote(paid_billing_dates=frozenset({date(2026, 12, 31)}), desired_effective_date=date(2027, 3, 1))
    assert [c.billing_date for c in q.settlement.charges] == [date(2027, 1, 31), date(2027, 2, 28)]


def test_a_date_too_early_is_quoted_with_every_broken_rule_and_no_settlement() -> None:
    young = ContractTerms(contract_id="C-2", start_date=date(2026, 10, 1), monthly_fee_jpy=5_000)
    q = _quote(contract=young, desired_effective_date=date(2026, 12, 20))
    assert q.codes == (RejectionCode.MINIMUM_TERM, RejectionCode.NOTICE_PERIOD)
    assert q.earliest_effective_date == date(2027, 10, 1) and q.effective_date == date(2026, 12, 20)
    assert q.settlement is None and q.offers == () and q.access_ends_on is None


def test_pending_and_ended_contracts() -> None:
    assert _quote(has_pending=True).codes == (RejectionCode.ALREADY_PENDING,)
    ended = _quote(contract=ContractTerms(contract_id="C-1", start_date=START, monthly_fee_jpy=1, ended=True))
    assert ended.codes == (RejectionCode.CONTRACT_ENDED,) and ended.earliest_effective_date is None


def test_without_a_reason_no_offers() -> None:
    assert _quote(reason=None).offers == ()


def test_intake_quotes_with_the_offer_policy_eligibility_decides_with(monkeypatch) -> None:
    from services.eligibility.settings import EligibilitySettings
    from services.intake.settings import IntakeSettings

    monkeypatch.setenv("ELIGIBILITY_OFFER_POLICY_JSON", '{"TOO_DIFFICULT": ["discount"]}')
    monkeypatch.setenv("INTAKE_API_KEYS", "a-key")
    assert IntakeSettings().offer_policy_json == EligibilitySettings().offer_policy_json == \
        '{"TOO_DIFFICULT": ["discount"]}'


def _contracts(percent: int) -> tuple[ContractTerms, ContractTerms]:
    """A contract in the holdout group of `percent` and one outside it."""
    ids = [f"C-{n}" for n in range(200)]
    held = next(c for c in ids if in_holdout(c, percent))
    kept = next(c for c in ids if not in_holdout(c, percent))
    return tuple(ContractTerms(contract_id=c, start_date=START, monthly_fee_jpy=12_000) for c in (held, kept))


def test_a_contract_in_the_holdout_is_quoted_no_offers() -> None:
    held, kept = _contracts(50)
    q = _quote(contract=held, holdout_percent=50)
    assert q.offers == () and q.holdout is True
    assert quote_view(held.contract_id, q).offers == []
    # Everything else is quoted as for anyone: only the offers are withheld.
    assert q.settlement == _quote(contract=held).settlement and q.codes == ()
    assert _quote(contract=held).offers == (Offer.consultation, Offer.discount)  # holdout 0: nobody held out
    assert _quote(contract=kept, holdout_percent=50).offers == (Offer.consultation, Offer.discount)
    assert not _quote(contract=kept, holdout_percent=50).holdout
    # A reason with no offers has nothing to withhold: not held out, as eligibility decides.
    assert not _quote(contract=held, holdout_percent=50, reason=Reason.BUSINESS_CLOSED).holdout


def test_intake_quotes_with_the_holdout_eligibility_decides_with(monkeypatch) -> None:
    from services.eligibility.settings import EligibilitySettings
    from services.intake.settings import IntakeSettings

    monkeypatch.setenv("INTAKE_API_KEYS", "a-key")
    assert IntakeSettings().offer_holdout_percent == EligibilitySettings().offer_holdout_percent == 0
    monkeypatch.setenv("ELIGIBILITY_OFFER_HOLDOUT_PERCENT", "20")
    assert IntakeSettings().offer_holdout_percent == EligibilitySettings().offer_holdout_percent == 20
