"""The one status rule intake and notifier share (shared.request_lifecycle): a status only moves forward."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.request_lifecycle import may_become, may_move_from, moved
from shared.vocabulary import RequestStatus as S

ENDS = {S.rejected, S.withdrawn, S.completed}


@pytest.mark.parametrize(("current", "to", "after"), [
    (S.received, S.accepted, S.accepted),
    (S.accepted, S.accepted, S.accepted),
    (S.withdrawn, S.accepted, S.withdrawn),   # a late copy of the acceptance
    (S.completed, S.accepted, S.completed),
    (S.accepted, S.withdrawn, S.withdrawn),
    (S.accepted, S.completed, S.completed),
    (S.withdrawn, S.completed, S.withdrawn),
    (S.accepted, S.rejected, S.accepted),     # a request is decided once
    (S.rejected, S.received, S.rejected),
    ("withdrawn", S.accepted, S.withdrawn),   # as a store reads it: text
])
def test_the_status_after_an_event(current, to: S, after: S) -> None:
    assert moved(current, to) is after


@given(st.sampled_from(list(S)), st.lists(st.sampled_from(list(S)), max_size=12))
def test_an_ended_request_stays_as_it_ended_whatever_comes_after(first: S, events: list) -> None:
    status = moved(S.received, first)
    for to in events:
        before, status = status, moved(status, to)
        if before in ENDS:
            assert status is before
        assert status is to or status is before


def test_the_statements_parameter_is_the_rule() -> None:
    assert may_move_from() == {to: sorted(s.value for s in may_become(to)) for to in S}
    assert may_move_from()[S.withdrawn] == ["accepted", "received"]
