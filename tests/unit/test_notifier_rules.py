"""notifier's acknowledgement rule: due at the acceptance time once the acceptance and the issued settlement
are both known, in whichever order they came; never sent for a request withdrawn or a settlement voided first,
and recorded (cancelled) whatever the order, so the rows do not depend on which topic was read first."""

from dataclasses import replace
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.domain import RequestFacts, acknowledgement_cancelled, acknowledgement_due

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


@pytest.mark.parametrize(("facts", "cancelled"), [
    (RequestFacts("withdrawn", AT, "issued"), AT),  # withdrawn before the settlement was read
    (RequestFacts("withdrawn", AT), None),
    (RequestFacts("withdrawn", None, "issued"), None),
    (RequestFacts("withdrawn", AT, "voided"), None),
    (RequestFacts("accepted", AT, "issued"), None),  # due, not cancelled
    (RequestFacts("completed", AT, "issued"), None),
], ids=repr)
def test_acknowledgement_cancelled(facts: RequestFacts, cancelled) -> None:
    assert acknowledgement_cancelled(facts) == cancelled


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
    """Replayed as the store writes it (a row once, ON CONFLICT DO NOTHING; a withdrawal cancels a pending one):
    sent only when both came before the withdrawal, and the same row whatever the order."""
    facts, rows = RequestFacts("received"), {}
    for event in history:
        facts = replace(facts, **_EVENTS[event])
        if event in ("accepted", "settled"):
            if (at := acknowledgement_due(facts)) is not None:
                rows.setdefault(at, "pending")
            elif (at := acknowledgement_cancelled(facts)) is not None:
                rows.setdefault(at, "cancelled")
        if event == "withdrawn":
            rows = {at: "cancelled" for at in rows}
    assert rows == {AT: "cancelled" if "withdrawn" in history else "pending"}
