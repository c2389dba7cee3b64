"""Sending what is due: every notification at least once, under one deterministic Message-ID.

SMTP cannot be exactly-once: between the server's 250 and our record of it there is always a moment where
a crash leaves us not knowing. So a mail is sent at least once, and never twice without cause:
- a claim (one statement, FOR UPDATE SKIP LOCKED, committed) marks up to `smtp_connections` due rows of
  the queue (`notification_queue`: only what is still to be sent) claimed, the database's time as `claimed_at`;
- each mail goes over SMTP on its own kept-open connection; after the server's 250 its row becomes 'sent'
  and its `notification.sent` goes to the outbox, in one transaction (the row leaves the queue): the event
  is emitted once, on confirmation. A mail the server refused, or whose DATA never ended, is unclaimed;
- a row still claimed after `sending_lease_s` (its notifier was killed between the claim and the
  confirmation) is claimed again by whichever notifier gets it first and sent again with the same
  Message-ID (`<request.kind.due@cancelflow>`), so that the receiving side keeps one copy. Such resends
  are counted (`cancelflow_notifications_resent_total`) and logged; only a notifier's death causes them.

Throughput: `WORKERS` workers, each a batch at a time (SKIP LOCKED keeps them apart). `NOTIFY notifier_due`
(the consumer scheduled something due now; this process's own consumer rings its doorbell at commit, other
processes' come through LISTEN) wakes one idle worker, so what falls due while a batch is on the
wire does not wait for it; each worker also polls every `dispatch_interval_s` for what falls due later
(reminders, a moved clock); expired leases are looked for every few seconds.

The SMTP connection is smtp_client.py; a mail's bytes, mime.py; its text, texts.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from shared import metrics
from shared.db import UNFLUSHED, is_lost, keeps_session_state
from shared.events import NotificationSent
from shared.messaging.outbox import Emitter, outbox_transaction
from shared.service import Runtime
from shared.vocabulary import NotificationKind

from shared.pii import mask_email
from shared.retry import until_it_works

from .recipients import Recipient, open_recipients
from .store import DUE_CHANNEL
from .settings import NotifierSettings
from .smtp_client import MailRefused, Mailer
from .texts import render

log = logging.getLogger(__name__)

# Three lanes, in this order: rows whose lease expired (sent again), what a customer just did (`now_lane`),
# then the scheduled reminders, which all fall due at 10:00 Tokyo at once; a day's burst of them never holds
# back an acknowledgement. Each lane reads its own partial index of the queue (migration 0007), which holds
# only what is still to be sent.
_CLAIM = """
WITH stale AS (
    SELECT q.id, 0 AS lane FROM notification_queue q
    WHERE q.claimed_at IS NOT NULL AND q.claimed_at < now() - make_interval(secs => $3::float8)
    ORDER BY q.claimed_at, q.id LIMIT $2
    FOR UPDATE SKIP LOCKED
), due_now AS (
    SELECT q.id, 1 AS lane FROM notification_queue q JOIN recipients r USING (request_id)
    WHERE q.claimed_at IS NULL AND q.now_lane AND q.due_at <= $1
    ORDER BY q.due_at, q.id LIMIT $2 - (SELECT count(*) FROM stale)
    FOR UPDATE OF q SKIP LOCKED
), due_scheduled AS (
    SELECT q.id, 2 AS lane FROM notification_queue q JOIN recipients r USING (request_id)
    WHERE q.claimed_at IS NULL AND NOT q.now_lane AND q.due_at <= $1
    ORDER BY q.due_at, q.id LIMIT $2 - (SELECT count(*) FROM stale) - (SELECT count(*) FROM due_now)
    FOR UPDATE OF q SKIP LOCKED
), picked AS (
    SELECT * FROM stale UNION ALL SELECT * FROM due_now UNION ALL SELECT * FROM due_scheduled
), claimed AS (
    -- By id through the primary key: a join with the picked rows can be planned as a hash of the whole
    -- table (the lanes' computed LIMITs are estimated at thousands of rows).
    UPDATE notification_queue q SET claimed_at = now()
    WHERE q.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING q.id
), unflushed AS (
    -- The claim's commit does not wait for the disk (see claim_due).
    """ + UNFLUSHED + """
)
SELECT n.id, n.request_id, n.kind, n.due_at, n.days_before, p.lane = 0 AS resent, r.contract_id,
       r.customer_name, r.email, r.customer_sealed, q.effective_date, q.offers, q.codes, q.earliest_effective_date, q.total_jpy,
       q.paid_through, q.taken_offer, k.key_id AS data_key_id, k.key AS data_key
FROM claimed c
CROSS JOIN unflushed
JOIN picked p USING (id)
JOIN notifications n ON n.id = c.id
JOIN recipients r ON r.request_id = n.request_id
LEFT JOIN requests q ON q.request_id = n.request_id
LEFT JOIN intake.data_keys k ON k.contract_id = r.contract_id
ORDER BY p.lane, n.due_at, n.id
"""

# Confirmed by the server's 250: the mail went out, so a row still pending is sent (one already sent was
# confirmed by a resend first). A claimed row is never ended by anyone else (withdrawals and erasures end only
# unclaimed ones), so no look at the queue: joined with it, the planner reads every claim through the partial
# index on claimed_at, dead entries included. Leaving 'pending' takes it out of the queue (migration 0009).
_CONFIRM = """
UPDATE notifications AS n SET status = 'sent', sent_at = $2, message_id = u.message_id
FROM unnest($1::bigint[], $3::text[]) AS u(id, message_id)
WHERE n.id = u.id AND n.status = 'pending'
RETURNING n.id
"""
_RELEASE = "UPDATE notification_queue SET claimed_at = NULL WHERE id = ANY($1::bigint[]) AND claimed_at IS NOT NULL"
_ERASED = ("UPDATE notifications AS n SET status = 'erased' FROM notification_queue q"
           " WHERE n.id = ANY($1::bigint[]) AND q.id = n.id AND q.claimed_at IS NOT NULL AND n.status = 'pending'")

WORKERS = 2  # dispatch batches running side by side


async def claim_due(conn, now, most: int, lease_s: float | None) -> list:
    """Claim up to `most` due rows of the queue (expired leases first, then what a customer just did, then the
    scheduled reminders) and return them with what their mails say, in a transaction of its own. `lease_s`
    None leaves expired leases out (the index scan for them ends at once).

    The claim's commit does not wait for its WAL to reach the disk (`synchronous_commit` off for it alone):
    it is visible to every other notifier at once, and only a crash of PostgreSQL itself within a moment
    of it can lose it. The row is then unclaimed, so it is sent again under the same Message-ID: the
    at-least-once a notifier's death already causes. The confirmation, which emits notification.sent, waits
    for the disk, and its flush carries the claim's WAL with it."""
    return await conn.fetch(_CLAIM, now, most, lease_s)


def message_id(row) -> str:
    return f"<{row['request_id']}.{row['kind']}.{int(row['due_at'].timestamp())}@cancelflow>"


class _NotSent(Exception):
    """The mail certainly was not taken (refused, or its DATA never ended): due again now."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


async def send_batch(rt: Runtime, mailers: list[Mailer], settings: NotifierSettings, *, reclaim: bool = True) -> int:
    """Claim up to len(mailers) due rows (and, with `reclaim`, rows whose lease ran out) and send them at once;
    how many were claimed (0: nothing due). A row whose customer was erased is marked so, never sent."""
    async with rt.pool.acquire() as conn:
        rows = await claim_due(conn, rt.clock.now(), len(mailers), settings.sending_lease_s if reclaim else None)
    if not rows:
        return 0
    claimed = len(rows)
    recipients = open_recipients(rows)
    if len(recipients) < claimed:
        async with rt.pool.acquire() as conn:
            await conn.execute(_ERASED, [row["id"] for row in rows if row["id"] not in recipients])
        rows = [row for row in rows if row["id"] in recipients]
        if not rows:
            return claimed
    resent = [row for row in rows if row["resent"]]
    if resent:
        for row in resent:
            metrics.NOTIFICATIONS_RESENT.labels(row["kind"]).inc()
        log.warning("sending again %d notification(s) left unconfirmed past the %.0f s lease (same Message-ID)",
                    len(resent), settings.sending_lease_s)
    msg_ids = [message_id(row) for row in rows]
    used = mailers[:len(rows)]
    messages = [mailer.compose(recipients[row["id"]].email, *_text(row, recipients[row["id"]]), msg_id, {
        "X-Cancelflow-Request-Id": row["request_id"], "X-Cancelflow-Kind": row["kind"],
        "X-Cancelflow-Due-At": row["due_at"].isoformat()}) for mailer, row, msg_id in zip(used, rows, msg_ids)]
    # Every mail up to its final "." at once, each on its own connection; then the "." of each, back to back.
    begun = await asyncio.gather(*(m.begin(msg) for m, msg in zip(used, messages)), return_exceptions=True)
    if settings.test_hold_file:
        await _hold(settings.test_hold_file, [i for i, b in zip(msg_ids, begun) if b is None])
    for k, (mailer, b) in enumerate(zip(used, begun)):
        if b is None:
            try:
                mailer.end_data()
            except Exception as exc:  # noqa: BLE001 - the connection broke: this DATA never ended
                mailer.close()
                begun[k] = exc
    outcomes = await asyncio.gather(*(m.result() if b is None else _raise(_NotSent(b)) for m, b in zip(used, begun)),
                                    return_exceptions=True)
    outcomes = [_NotSent(o) if isinstance(o, MailRefused) else o for o in outcomes]
    sent = [(row, i, recipients[row["id"]]) for row, i, o in zip(rows, msg_ids, outcomes) if o is None]
    if sent:
        async def confirm() -> None:
            await _confirm(rt, sent)
        # Retried: only this process's death (or a database down past the lease) makes them go out again.
        await until_it_works("the database (confirming mails sent)", confirm, first_s=0.2, most_s=2.0)
    await _release(rt, [row["id"] for row, o in zip(rows, outcomes) if isinstance(o, _NotSent)])
    # A mail whose answer never came (the connection lost after its ".") stays claimed: the lease resends it.
    error = next((o for o in outcomes if isinstance(o, BaseException)), None)
    if error is not None:
        raise error.cause if isinstance(error, _NotSent) else error
    return claimed


async def _release(rt: Runtime, ids: list[int]) -> None:
    """Claimed rows certainly not sent: due again now (else when their lease runs out)."""
    if not ids:
        return
    try:
        async with rt.pool.acquire() as conn:
            await conn.execute(_RELEASE, ids)
    except Exception:  # noqa: BLE001 - the database is gone: their lease runs out instead
        log.warning("%d unsent notification(s) stay claimed until their lease runs out", len(ids))


def _text(row, recipient: Recipient) -> tuple[str, str]:
    content = render(
        NotificationKind(row["kind"]), customer_name=recipient.name, request_id=row["request_id"],
        contract_id=row["contract_id"], effective_date=row["effective_date"], total_jpy=row["total_jpy"],
        paid_through=row["paid_through"], offers=tuple(row["offers"] or ()), codes=tuple(row["codes"] or ()),
        earliest_effective_date=row["earliest_effective_date"], days_before=row["days_before"],
        taken_offer=row["taken_offer"])
    return content.subject, content.body


async def _confirm(rt: Runtime, sent: list) -> None:
    """The mails the server accepted: 'sent', and their notification.sent, in one transaction."""
    sent_at = rt.clock.now()
    async with rt.pool.acquire() as conn, outbox_transaction(conn, rt.schema, rt.relay, rt.doorbell) as outbox:
        confirmed = {r["id"] for r in await conn.fetch(_CONFIRM, [row["id"] for row, _, _ in sent], sent_at,
                                                       [i for _, i, _ in sent])}
        for row, _, recipient in sent:
            if row["id"] in confirmed:
                Emitter(outbox, rt.name, correlation_id=row["request_id"])(NotificationSent(
                    request_id=row["request_id"], kind=NotificationKind(row["kind"]), channel="email",
                    recipient=mask_email(recipient.email), sent_at=sent_at, due_at=row["due_at"]),
                    key=row["contract_id"])
    for row, _, _ in sent:
        metrics.NOTIFICATIONS_SENT.labels(row["kind"]).inc()


async def _hold(path: str, msg_ids: list[str]) -> None:
    """Tests only: the moment after the claim's commit and before the end of DATA, held open."""
    if msg_ids and os.path.exists(path):
        Path(path + ".held").write_text("\n".join(msg_ids) + "\n")
        while os.path.exists(path):
            await asyncio.sleep(0.05)


async def _raise(error: BaseException) -> None:
    raise error


class _Wakeups:
    """Which worker claims next: a NOTIFY wakes one idle worker, so a mail that falls due while a batch is on
    the wire is claimed by the other worker at once instead of after that batch; with every worker busy, the
    first to finish claims again without waiting. A full batch wakes an idle worker too (more is due)."""

    def __init__(self) -> None:
        self._idle: list[asyncio.Future] = []
        self._missed = False

    def notify(self) -> None:
        if not self.wake_idle():
            self._missed = True

    def wake_idle(self) -> bool:
        while self._idle:
            waiter = self._idle.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    async def wait(self, timeout_s: float) -> None:
        """Until notified, or `timeout_s` (the poll for what falls due later and for expired leases)."""
        if self._missed:
            self._missed = False
            return
        waiter = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            if waiter in self._idle:
                self._idle.remove(waiter)


def dispatch_loop(settings: NotifierSettings):
    async def dispatch(rt: Runtime) -> None:
        workers = [[Mailer(settings) for _ in range(settings.smtp_connections)] for _ in range(WORKERS)]
        wakeups = _Wakeups()
        listening = asyncio.Lock()
        listener = None
        # Expired leases only come from a notifier's death, so they are looked for every few seconds, not in
        # every claim: that index scan steps over every confirmed claim not yet vacuumed away.
        reclaim_every_s = min(5.0, settings.sending_lease_s / 2)
        next_reclaim = 0.0

        def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            if not rt.doorbell.rung_here(payload):  # this process's own commits ring the doorbell at once
                wakeups.notify()

        async def drop_listener() -> None:
            """The wake-up connection back to the pool (reset in full there: it LISTENed), lost or not."""
            nonlocal listener
            conn, listener = listener, None
            if conn is None:
                return
            try:
                if not is_lost(conn):
                    await conn.remove_listener(DUE_CHANNEL, on_notify)
                await rt.pool.release(conn, timeout=5)
            except Exception as exc:  # noqa: BLE001 - the pool replaces a connection it cannot reset
                log.info("wake-up connection dropped: %s", type(exc).__name__)

        async def listen() -> None:
            nonlocal listener
            async with listening:
                if listener is None or is_lost(listener):
                    await drop_listener()
                    listener = await rt.pool.acquire()
                    keeps_session_state(listener)
                    await listener.add_listener(DUE_CHANNEL, on_notify)

        async def work(mailers: list[Mailer]) -> None:
            async def send() -> int:
                nonlocal next_reclaim
                try:
                    await listen()
                    now = asyncio.get_running_loop().time()
                    reclaim = now >= next_reclaim
                    if reclaim:
                        next_reclaim = now + reclaim_every_s
                    return await send_batch(rt, mailers, settings, reclaim=reclaim)
                except Exception:
                    for mailer in mailers:
                        mailer.close()
                    raise

            while True:
                # SMTP or the database down: the rows stay pending, sent once both answer again.
                claimed = await until_it_works("SMTP and the database (dispatch paused)", send,
                                               first_s=2 * settings.dispatch_interval_s, most_s=10.0)
                if claimed == len(mailers):
                    wakeups.wake_idle()
                else:
                    # A batch that was not full means nothing more was due a moment ago: a NOTIFY wakes us.
                    await wakeups.wait(settings.dispatch_interval_s)

        rt.doorbell.listen(DUE_CHANNEL, wakeups.notify)
        try:
            await asyncio.gather(*(work(mailers) for mailers in workers))
        finally:
            rt.doorbell.unlisten(DUE_CHANNEL, wakeups.notify)
            for mailers in workers:
                for mailer in mailers:
                    mailer.close()
            await drop_listener()

    return dispatch
