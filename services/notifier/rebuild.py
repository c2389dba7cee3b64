"""notifier's state from the log: the recipients from `cancellation.requested`; what it knows of each request,
and every notification it scheduled, from the decisions and settlements, as the consumer writes them (the
reminder schedule is the domain's, from the acceptance's own time); then what it sent, from its own
`notification.sent` (sent_at as sent, the deterministic Message-ID), which outranks a cancellation written
by a withdrawal or a completion read before it. Nothing is sent: the dispatcher does not run on a schema
being built, and the rows still pending are exactly the ones not sent."""

from __future__ import annotations

from shared import topics
from shared.events import (CancellationAccepted, CancellationCompleted, CancellationRejected,
                           CancellationRequested, CancellationWithdrawn, CustomerErasureRequested, NotificationSent,
                           SettlementIssued, SettlementVoided)
from shared.messaging.projection import Projection, through

from . import handlers as h
from .dispatch import message_id
from .store import NotifierStore

_SENT = ("INSERT INTO notifications (request_id, kind, due_at, days_before, status, sent_at, message_id)"
         " VALUES ($1, $2, $3, NULL, 'sent', $4, $5) ON CONFLICT (request_id, kind, due_at)"
         " DO UPDATE SET status = 'sent', sent_at = excluded.sent_at, message_id = excluded.message_id")


def _handler(handler):
    return through(handler, NotifierStore, "notifier")


async def _sent(conn, envelope, e: NotificationSent) -> None:
    if e.due_at is None:  # an older producer's event: which row it was is unknown
        return
    row = {"request_id": e.request_id, "kind": e.kind.value, "due_at": e.due_at}
    conn.defer(_SENT, e.request_id, e.kind.value, e.due_at, e.sent_at, message_id(row))


PROJECTION = Projection(
    service="notifier",
    # What was sent last: it is the record of what happened to each row; then the erasures (contracts.events),
    # which clear the recipients and whatever was still to be sent.
    topics=(topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS, topics.CONTRACTS),
    apply={
        CancellationRequested.event_type: _handler(h.on_requested),
        CancellationAccepted.event_type: _handler(h.on_accepted),
        CancellationRejected.event_type: _handler(h.on_rejected),
        CancellationWithdrawn.event_type: _handler(h.on_withdrawn),
        CancellationCompleted.event_type: _handler(h.on_completed),
        SettlementIssued.event_type: _handler(h.on_settlement_issued),
        SettlementVoided.event_type: _handler(h.on_settlement_voided),
        NotificationSent.event_type: _sent,
        CustomerErasureRequested.event_type: _handler(h.on_erasure_requested),
    },
    own=frozenset({NotificationSent.event_type}),
    # Ids are the database's own numbering; a queue row's claim is a notifier's send in flight.
    bookkeeping={"notifications": ("id",), "notification_queue": ("id", "claimed_at")})
