"""notifier's acknowledgement rule: due at the acceptance time once the acceptance and the issued settlement
are both known, in whichever order they came; never for a request withdrawn or a settlement voided first."""

from dataclasses import replace
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.domain import RequestFacts, acknowledgement_due

AT = datetime(2026, 5, 1, 3, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("facts", "due"), [
    (RequestFacts("received"), None),
    (RequestFacts("received", settlement="issued"), None),
    (RequestFacts("accepted", AT), None),
    (RequestFacts("accepted", AT, "issued"), AT),
    (RequestFacts("accepted", None, "issued"), None),
    (RequestFacts("accepted", AT, "voided"), None),
    (RequestFacts("withdrawn", AT, "issued"), None),
    (RequestFacts("completed", AT, "issued"), None),
    (RequestFacts("rejected", None, "issued"), None),
], ids=repr)
def test_acknowledgement_due(facts: RequestFacts, due) -> None:
    assert acknowledgement_due(facts) == due


_EVENTS = {"accepted": {"status": "accepted", "accepted_at": AT}, "settled": {"settlement": "issued"},
           "withdrawn": {"status": "withdrawn"}, "voided": {"settlement": "voided"}}


@st.composite
def _histories(draw) -> list[str]:
    """The acceptance and the settlement in any order; a withdrawal (after the acceptance: one partition of
    cancellation.decisions) and the voiding it causes (after the settlement), or not."""
    order = draw(st.permutations(["accepted", "settled"]))
    if draw(st.booleans()):
        order.insert(draw(st.integers(order.index("accepted") + 1, len(order))), "withdrawn")
        if draw(st.booleans()):
            order.insert(draw(st.integers(max(order.index("settled"), order.index("withdrawn")) + 1, len(order))),
                         "voided")
    return order


@given(_histories())
def test_whichever_comes_second_acknowledges_unless_withdrawn_first(history: list[str]) -> None:
    facts, due = RequestFacts("received"), set()
    for event in history:
        facts = replace(facts, **_EVENTS[event])
        if event in ("accepted", "settled") and (at := acknowledgement_due(facts)) is not None:
            due.add(at)
    both_before_withdrawal = "withdrawn" not in history or max(history.index("accepted"), history.index("settled")) \
        < history.index("withdrawn")
    assert due == ({AT} if both_before_withdrawal else set())
