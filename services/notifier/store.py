"""notifier's unit of work: its SQL (recipients, what it knows of each request, the notifications due).

What the handlers read is what is known of a request (`facts`), for a whole batch in one statement
(`preload`); every write is deferred, so a batch's writes reach PostgreSQL in a few executemany round
trips, in order. A notification written 'pending' is queued for the dispatcher, and leaves the queue when it
ends, by the triggers of migrations 0007 and 0009: no statement here writes the queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from shared.events import CancellationAccepted, CancellationRejected, CancellationRequested, SettlementIssued
from shared.messaging.consumer import Store
from shared.request_lifecycle import may_move_from, moved
from shared.vocabulary import NotificationKind, RequestStatus

from .domain import RequestFacts, ScheduledNotification, days_before

# The dispatcher LISTENs here: a notification that is due now goes out without waiting for its poll.
DUE_CHANNEL = "notifier_due"

# What each status may move from (shared.request_lifecycle), as the statements' parameter.
_MAY_MOVE_FROM = may_move_from()


def _forward(to: str, param: int) -> str:
    """The status `to` if the request's status is in parameter `param` (what it may move from), else as it is."""
    return f"CASE WHEN requests.status = ANY(${param}::text[]) THEN '{to}' ELSE requests.status END"


def _end_unclaimed(status: str, which: str) -> str:
    """The notifications `which` still to be sent and not being sent now moved to `status` (a claimed mail's
    outcome is the dispatcher's to record): their queue rows locked first, so that a claim committing
    meanwhile is seen and its row left alone."""
    return (f"WITH unclaimed AS (SELECT q.id FROM notifications n JOIN notification_queue q USING (id)"
            f" WHERE {which} AND n.status = 'pending' AND q.claimed_at IS NULL FOR UPDATE OF q)"
            f" UPDATE notifications SET status = '{status}' WHERE id IN (SELECT id FROM unclaimed)")


_ADD = ("INSERT INTO notifications (request_id, kind, due_at, days_before, status) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (request_id, kind, due_at) DO NOTHING")
_RECIPIENT = ("INSERT INTO recipients (request_id, contract_id, customer_name, email, customer_sealed)"
              " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING")
_ERASE_PENDING = _end_unclaimed("erased", "n.request_id IN (SELECT request_id FROM recipients WHERE contract_id = $1)")
_ERASE_RECIPIENTS = ("UPDATE recipients SET customer_name = NULL, email = NULL, customer_sealed = NULL,"
                     " erased_at = $2 WHERE contract_id = $1")

# What is known of a request (what the acknowledgement rule reads), its row locked until the commit and
# created if none: whichever of the acceptance and the settlement comes second (two topics, maybe two
# processes) waits for the first to commit and sees it. One statement for a whole batch's requests.
_KNOWN = """
INSERT INTO requests (request_id, contract_id, status)
SELECT r.request_id, r.contract_id, 'received' FROM unnest($1::text[], $2::text[]) AS r(request_id, contract_id)
ORDER BY r.request_id
ON CONFLICT (request_id) DO UPDATE SET status = requests.status
RETURNING request_id, status, accepted_at, settlement_status
"""
# The acceptance and its notifications (the reminders, and the acknowledgement if the settlement is in),
# the settlement and its acknowledgement (if the acceptance is in): one statement each, whatever the rule
# decided, so that a batch's run of them is one executemany round trip.
_ACCEPTED = """
WITH request AS (
    INSERT INTO requests (request_id, contract_id, status, accepted_at, effective_date, offers)
    VALUES ($1, $2, 'accepted', $3, $4, $5)
    ON CONFLICT (request_id) DO UPDATE SET status = """ + _forward("accepted", 10) + """,
        accepted_at = excluded.accepted_at,
        effective_date = excluded.effective_date, offers = excluded.offers)
INSERT INTO notifications (request_id, kind, due_at, days_before, status)
SELECT $1, kind, due_at, days_before, status
FROM unnest($6::text[], $7::timestamptz[], $8::int[], $9::text[]) AS r(kind, due_at, days_before, status)
ON CONFLICT (request_id, kind, due_at) DO NOTHING
"""
_SETTLED = """
WITH request AS (
    INSERT INTO requests (request_id, contract_id, status, total_jpy, paid_through, settlement_status)
    VALUES ($1, $2, 'received', $3, $4, 'issued')
    ON CONFLICT (request_id) DO UPDATE SET total_jpy = excluded.total_jpy, paid_through = excluded.paid_through,
        settlement_status = 'issued')
INSERT INTO notifications (request_id, kind, due_at, days_before, status)
SELECT $1, 'acknowledgement', $5, NULL, $6 WHERE $5::timestamptz IS NOT NULL
ON CONFLICT (request_id, kind, due_at) DO NOTHING
"""
_VOIDED = "UPDATE requests SET settlement_status = 'voided' WHERE request_id = $1"
_REJECTED = ("INSERT INTO requests (request_id, contract_id, status, codes, earliest_effective_date)"
             " VALUES ($1, $2, 'rejected', $3, $4) ON CONFLICT (request_id)"
             " DO UPDATE SET status = " + _forward("rejected", 5) + ","
             " codes = excluded.codes, earliest_effective_date = excluded.earliest_effective_date")
_WITHDRAWN = ("INSERT INTO requests (request_id, contract_id, status, taken_offer) VALUES ($1, $2, 'withdrawn', $3)"
              " ON CONFLICT (request_id) DO UPDATE SET status = " + _forward("withdrawn", 4) + ","
              " taken_offer = excluded.taken_offer")
_COMPLETED = "UPDATE requests SET status = 'completed' WHERE request_id = $1 AND status = ANY($2::text[])"
_CANCEL_PENDING = _end_unclaimed("cancelled", "n.request_id = $1 AND n.kind = ANY($2::text[])")


# The acknowledgement rule (domain.acknowledgement): what is known of a request -> (due at, cancelled) or None.
Acknowledge = Callable[[RequestFacts], "tuple[datetime, bool] | None"]


def _facts(row: Any) -> RequestFacts:
    return RequestFacts(row["status"], row["accepted_at"], row["settlement_status"])


class NotifierStore(Store):
    # The batch read: what is known of the requests a batch's acceptances and settlements are about, kept
    # up to date by this store's writes while the batch runs (fast path only; the careful path reads).
    known: dict[str, RequestFacts] | None = None

    async def preload(self, items: list) -> dict[str, RequestFacts] | None:
        about = {e.request_id: e.contract_id or "" for _, e in items
                 if isinstance(e, (CancellationAccepted, SettlementIssued))}
        if not about:
            return None
        ids = sorted(about)
        rows = await self.conn.fetch(_KNOWN, ids, [about[i] for i in ids])
        self.known = {r["request_id"]: _facts(r) for r in rows}
        return self.known

    async def facts(self, request_id: str, contract_id: str) -> RequestFacts:
        """What is known of the request, its row locked until the commit."""
        if self.known is not None and request_id in self.known:
            return self.known[request_id]
        return _facts(await self.conn.fetchrow(_KNOWN, [request_id], [contract_id]))

    def _learned(self, request_id: str, **changes: Any) -> None:
        if self.known is not None and request_id in self.known:
            self.known[request_id] = replace(self.known[request_id], **changes)

    def _moved(self, request_id: str, to: RequestStatus) -> None:
        if self.known is not None and request_id in self.known:
            self._learned(request_id, status=moved(self.known[request_id].status, to))

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

    async def accepted(self, e: CancellationAccepted, accepted_at: datetime,
                       reminders: Sequence[ScheduledNotification], *, acknowledge: Acknowledge) -> None:
        """What the acceptance says, its reminders, and the acknowledgement `acknowledge` asks for given what
        is known of the request then."""
        facts = await self.facts(e.request_id, e.contract_id or "")
        known = replace(facts, status=moved(facts.status, RequestStatus.accepted), accepted_at=accepted_at)
        kinds = [r.kind.value for r in reminders]
        due = [r.due_at for r in reminders]
        days = [days_before(r, effective_date=e.effective_date, accepted_at=accepted_at) for r in reminders]
        statuses = ["pending"] * len(reminders)
        if (ack := acknowledge(known)) is not None:
            kinds.append(NotificationKind.acknowledgement.value)
            due.append(ack[0])
            days.append(None)
            statuses.append("cancelled" if ack[1] else "pending")
        self.conn.defer(_ACCEPTED, e.request_id, e.contract_id or "", accepted_at, e.effective_date,
                        [o.value for o in e.offers], kinds, due, days, statuses,
                        _MAY_MOVE_FROM[RequestStatus.accepted])
        self.outbox.notify(DUE_CHANNEL)
        self._learned(e.request_id, status=known.status, accepted_at=accepted_at)

    async def settled(self, e: SettlementIssued, *, acknowledge: Acknowledge) -> None:
        """The settlement's figures, and the acknowledgement `acknowledge` asks for given what is known of the
        request then."""
        known = replace(await self.facts(e.request_id, e.contract_id or ""), settlement="issued")
        ack = acknowledge(known)
        self.conn.defer(_SETTLED, e.request_id, e.contract_id or "", e.total_jpy, e.paid_through,
                        ack[0] if ack else None, "cancelled" if ack and ack[1] else "pending")
        if ack is not None and not ack[1]:
            self.outbox.notify(DUE_CHANNEL)
        self._learned(e.request_id, settlement="issued")

    def settlement_voided(self, request_id: str) -> None:
        self.conn.defer(_VOIDED, request_id)
        self._learned(request_id, settlement="voided")

    def rejected(self, e: CancellationRejected) -> None:
        self.conn.defer(_REJECTED, e.request_id, e.contract_id or "", [c.value for c in e.codes],
                        e.earliest_effective_date, _MAY_MOVE_FROM[RequestStatus.rejected])
        self._moved(e.request_id, RequestStatus.rejected)

    def withdrawn(self, request_id: str, contract_id: str, taken_offer: str | None = None) -> None:
        self.conn.defer(_WITHDRAWN, request_id, contract_id, taken_offer, _MAY_MOVE_FROM[RequestStatus.withdrawn])
        self._moved(request_id, RequestStatus.withdrawn)

    def completed(self, request_id: str) -> None:
        self.conn.defer(_COMPLETED, request_id, _MAY_MOVE_FROM[RequestStatus.completed])
        self._moved(request_id, RequestStatus.completed)

    def cancel_pending(self, request_id: str, kinds: Sequence[NotificationKind]) -> None:
        self.conn.defer(_CANCEL_PENDING, request_id, [k.value for k in kinds])

    def schedule(self, request_id: str, kind: NotificationKind, due_at: datetime, *, cancelled: bool = False) -> None:
        """A notification due at `due_at`; the dispatcher is woken at commit. `cancelled`: recorded as already
        cancelled (never sent), as the domain says."""
        self.conn.defer(_ADD, request_id, kind.value, due_at, None, "cancelled" if cancelled else "pending")
        if not cancelled:
            self.outbox.notify(DUE_CHANNEL)
