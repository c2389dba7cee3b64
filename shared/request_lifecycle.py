"""How a request's status moves, the one rule intake's status view and notifier's record of a request share:
only forward. An answer never goes back to "received", an end (rejected, withdrawn, completed) is final, so
a redelivery or a replay older than the inbox window cannot undo what came after it.

Pure: values in, a decision out, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from .vocabulary import RequestStatus

S = RequestStatus

_MAY_BECOME: Mapping[RequestStatus, frozenset[RequestStatus]] = MappingProxyType({
    S.received: frozenset(),
    S.accepted: frozenset({S.received}),
    S.rejected: frozenset({S.received}),
    S.withdrawn: frozenset({S.received, S.accepted}),
    S.completed: frozenset({S.received, S.accepted}),
})


def may_become(status: RequestStatus) -> frozenset[RequestStatus]:
    """The statuses a request may be in for it to move to `status`."""
    return _MAY_BECOME[status]


def moved(current: RequestStatus | str, to: RequestStatus) -> RequestStatus:
    """The status after an event that says `to`, for a request that is `current`: `to` if it moves forward."""
    return to if RequestStatus(current) in _MAY_BECOME[to] else RequestStatus(current)


def may_move_from() -> dict[RequestStatus, list[str]]:
    """`may_become` of every status, as a statement's text[] parameter (computed once by each store)."""
    return {status: sorted(s.value for s in _MAY_BECOME[status]) for status in RequestStatus}
