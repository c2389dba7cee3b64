"""notifier's unit of work: its SQL (recipients, what it knows of each request, the notifications due).

The consumer only writes (what it must read is read inside the statements), so every write is deferred:
a batch's writes reach PostgreSQL in a few executemany round trips, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from shared.events import CancellationAccepted, CancellationRejected, CancellationRequested, SettlementIssued
from shared.messaging.consumer import Store
from shared.vocabulary import NotificationKind

from .domain import ScheduledNotification, days_before

# The dispatcher LISTENs here: a notification that is due now goes out without waiting for its poll.
DUE_CHANNEL = "notifier_due"

_ADD = ("INSERT INTO notifications (request_id, kind, due_at, days_before) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (request_id, kind, due_at) DO NOTHING")
_RECIPIENT = ("INSERT INTO recipients (request_id, contract_id, customer_name, email, customer_sealed)"
              " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING")
_ERASE_PENDING = ("UPDATE notifications SET status = 'erased' WHERE status = 'pending'"
                  " AND request_id IN (SELECT request_id FROM recipients WHERE contract_id = $1)")
_ERASE_RECIPIENTS = ("UPDATE recipients SET customer_name = NULL, email = NULL, customer_sealed = NULL,"
                     " erased_at = $2 WHERE contract_id = $1")

# The acknowledgement states the effective date, the final charge and the offers: it waits for both the
# acceptance and the settlement, whichever comes last (two topics, maybe two processes), and is due at the
# acceptance time. The statement that records the second half schedules it, under the request row's lock,
# so whichever comes second sees the first; one statement each, so a run of them is one executemany. A
# settlement read after the withdrawal records the acknowledgement as cancelled, as a withdrawal read after
# it would have: the rows do not depend on which topic was read first (what `cancelflow rebuild` needs).
_ACCEPTED = """
WITH request AS (
    INSERT INTO requests (request_id, contract_id, status, accepted_at, effective_date, offers)
    VALUES ($1, $2, 'accepted', $3, $4, $5)
    ON CONFLICT (request_id) DO UPDATE SET status = 'accepted', accepted_at = excluded.accepted_at,
        effective_date = excluded.effective_date, offers = excluded.offers
    RETURNING request_id, accepted_at, settlement_status),
reminders AS (
    INSERT INTO notifications (request_id, kind, due_at, days_before)
    SELECT $1, kind, due_at, days_before FROM unnest($6::text[], $7::timestamptz[], $8::int[]) AS r(kind, due_at, days_before)
    ON CONFLICT (request_id, kind, due_at) DO NOTHING)
INSERT INTO notifications (request_id, kind, due_at, days_before)
SELECT request_id, 'acknowledgement', accepted_at, NULL FROM request WHERE settlement_status = 'issued'
ON CONFLICT (request_id, kind, due_at) DO NOTHING
"""
_SETTLED = """
WITH request AS (
    INSERT INTO requests (request_id, contract_id, status, total_jpy, paid_through, settlement_status)
    VALUES ($1, $2, 'received', $3, $4, 'issued')
    ON CONFLICT (request_id) DO UPDATE SET total_jpy = excluded.total_jpy, paid_through = excluded.paid_through,
        settlement_status = 'issued'
    RETURNING request_id, status, accepted_at)
INSERT INTO notifications (request_id, kind, due_at, days_before, status)
SELECT request_id, 'acknowledgement', accepted_at, NULL, CASE status WHEN 'withdrawn' THEN 'cancelled' ELSE 'pending' END
FROM request WHERE status IN ('accepted', 'withdrawn') AND accepted_at IS NOT NULL
ON CONFLICT (request_id, kind, due_at) DO NOTHING
"""
_VOIDED = "UPDATE requests SET settlement_status = 'voided' WHERE request_id = $1"
_REJECTED = ("INSERT INTO requests (request_id, contract_id, status, codes, earliest_effective_date)"
             " VALUES ($1, $2, 'rejected', $3, $4) ON CONFLICT (request_id) DO UPDATE SET status = 'rejected',"
             " codes = excluded.codes, earliest_effective_date = excluded.earliest_effective_date")
_WITHDRAWN = ("INSERT INTO requests (request_id, contract_id, status, taken_offer) VALUES ($1, $2, 'withdrawn', $3)"
              " ON CONFLICT (request_id) DO UPDATE SET status = 'withdrawn', taken_offer = excluded.taken_offer")
_STATUS = ("INSERT INTO requests (request_id, contract_id, status) VALUES ($1, $2, $3)"
           " ON CONFLICT (request_id) DO UPDATE SET status = excluded.status")
_COMPLETED = "UPDATE requests SET status = 'completed' WHERE request_id = $1"
_CANCEL_PENDING = ("UPDATE notifications SET status = 'cancelled' WHERE request_id = $1 AND status = 'pending'"
                   " AND kind = ANY($2::text[])")


class NotifierStore(Store):
    def save_recipient(self, e: CancellationRequested) -> None:
        """Sealed as it came (opened at send time); a version-1 event's customer in clear."""
        clear = e.customer if e.customer_sealed is None else None
        self.conn.defer(_RECIPIENT, e.request_id, e.contract_id, clear.name if clear else None,
                        str(clear.email) if clear else None,
                        e.customer_sealed.model_dump(mode="json") if e.customer_sealed else None)

    def erase(self, contract_id: str, at: datetime) -> None:
        """What notifier holds of the contract's customer, gone; what was still to be sent, never sent."""
        self.conn.defer(_ERASE_PENDING, contract_id)
        self.conn.defer(_ERASE_RECIPIENTS, contract_id, at)

    def accepted(self, e: CancellationAccepted, accepted_at: datetime,
                 reminders: Sequence[ScheduledNotification]) -> None:
        """What the acceptance says, its reminders, and the acknowledgement if the settlement is in."""
        days = [days_before(r, effective_date=e.effective_date, accepted_at=accepted_at) for r in reminders]
        self.conn.defer(_ACCEPTED, e.request_id, e.contract_id or "", accepted_at, e.effective_date,
                        [o.value for o in e.offers], [r.kind.value for r in reminders], [r.due_at for r in reminders],
                        days)
        self.outbox.notify(DUE_CHANNEL)

    def settled(self, e: SettlementIssued) -> None:
        """The settlement's figures, and the acknowledgement if the acceptance is in."""
        self.conn.defer(_SETTLED, e.request_id, e.contract_id or "", e.total_jpy, e.paid_through)
        self.outbox.notify(DUE_CHANNEL)

    def settlement_voided(self, request_id: str) -> None:
        self.conn.defer(_VOIDED, request_id)

    def rejected(self, e: CancellationRejected) -> None:
        self.conn.defer(_REJECTED, e.request_id, e.contract_id or "", [c.value for c in e.codes],
                        e.earliest_effective_date)

    def withdrawn(self, request_id: str, contract_id: str, taken_offer: str | None = None) -> None:
        self.conn.defer(_WITHDRAWN, request_id, contract_id, taken_offer)

    def completed(self, request_id: str) -> None:
        self.conn.defer(_COMPLETED, request_id)

    def cancel_pending(self, request_id: str, kinds: Sequence[NotificationKind]) -> None:
        self.conn.defer(_CANCEL_PENDING, request_id, [k.value for k in kinds])

    def schedule(self, request_id: str, kind: NotificationKind, due_at: datetime) -> None:
        """A notification due at `due_at`; the dispatcher is woken at commit."""
        self.conn.defer(_ADD, request_id, kind.value, due_at, None)
        self.outbox.notify(DUE_CHANNEL)



