"""Sending what is due, each notification exactly once across crashes.

Due rows are locked (FOR UPDATE SKIP LOCKED), marked sent and their `notification.sent` queued in the
outbox, all in one open transaction. Each mail then goes over SMTP up to, but not including, the final
"." of DATA; only then is the transaction committed, and the "." sent. SMTP servers discard a message
whose DATA never ended, so:
- a crash before the commit leaves the rows pending and the half-sent mails discarded: sent again later;
- the commit succeeded: the "." follows at once (no round trip in between). If the server then refuses
  a mail, its row is put back to pending.
The remaining window, a crash between PostgreSQL's commit and writing five bytes per mail, is a few
syscalls long. The Message-ID is deterministic, so even then a receiving system could drop a copy.

Throughput: a transaction claims up to `smtp_connections` due rows and sends them at once, each on its own SMTP
connection (kept open between mails), so one commit and a handful of round trips serve several mails;
up to `WORKERS` such transactions run side by side when more than a batch is due (SKIP LOCKED keeps
them apart). The loop is woken by `NOTIFY notifier_due` when the consumer schedules something due now,
and polls every `dispatch_interval_s` for what falls due later (reminders, a moved clock).

The connection that holds DATA open is smtp_client.py; a mail's bytes, mime.py; its text, texts.py.
"""

from __future__ import annotations

import asyncio
import logging

from shared import metrics
from shared.db import is_lost
from shared.events import NotificationSent
from shared.messaging.outbox import Emitter, Outbox
from shared.service import Runtime
from shared.vocabulary import NotificationKind

from shared.pii import mask_email
from shared.retry import until_it_works

from .keyring import Keyring
from .store import DUE_CHANNEL
from .settings import NotifierSettings
from .smtp_client import MailRefused, Mailer
from .texts import render

log = logging.getLogger(__name__)

# Two lanes, each by its own partial index: what a customer just did (days_before IS NULL) first, then the
# scheduled reminders, which all fall due at 10:00 Tokyo at once; a day's burst of them never holds back an
# acknowledgement (a reminder minutes late says the same thing).
_DUE = """
SELECT n.id, n.request_id, n.kind, n.due_at, n.days_before, r.contract_id, r.customer_name, r.email,
       r.customer_sealed,
       q.effective_date, q.offers, q.codes, q.earliest_effective_date, q.total_jpy, q.paid_through, q.taken_offer
FROM notifications n
JOIN recipients r USING (request_id)
LEFT JOIN requests q USING (request_id)
WHERE n.status = 'pending' AND n.days_before IS {lane} AND n.due_at <= $1
ORDER BY n.due_at, n.id
LIMIT $2
FOR UPDATE OF n SKIP LOCKED
"""
DUE_LANES = (_DUE.format(lane="NULL"), _DUE.format(lane="NOT NULL"))

MARK_SENT = """
UPDATE notifications AS n SET status = 'sent', sent_at = $2, message_id = u.message_id
FROM unnest($1::bigint[], $3::text[]) AS u(id, message_id)
WHERE n.id = u.id
"""

WORKERS = 2  # dispatch transactions running side by side


async def claim_due(conn, now, most: int) -> list:
    """Lock up to `most` due rows, what a customer just did first (inside the caller's transaction)."""
    rows: list = []
    for due in DUE_LANES:
        if len(rows) < most:
            rows += await conn.fetch(due, now, most - len(rows))
    return rows


def message_id(row) -> str:
    return f"<{row['request_id']}.{row['kind']}.{int(row['due_at'].timestamp())}@cancelflow>"


ERASED = "UPDATE notifications SET status = 'erased' WHERE id = ANY($1::bigint[])"


async def send_batch(rt: Runtime, mailers: list[Mailer], keyring: Keyring) -> int:
    """Claim up to len(mailers) due rows in one transaction and send them at once; 0 when nothing is due.
    A row whose customer was erased is marked so, never sent."""
    async with rt.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        committed = False
        outbox = None
        used: list[Mailer] = []
        try:
            rows = await claim_due(conn, rt.clock.now(), len(mailers))
            if not rows:
                await tx.rollback()
                return 0
            claimed = len(rows)
            recipients = await keyring.open(rows)
            if len(recipients) < claimed:
                await conn.execute(ERASED, [r["id"] for r in rows if r["id"] not in recipients])
                rows = [r for r in rows if r["id"] in recipients]
                if not rows:
                    await tx.commit()
                    committed = True
                    return claimed
            sent_at = rt.clock.now()
            msg_ids = [message_id(row) for row in rows]
            await conn.execute(MARK_SENT, [row["id"] for row in rows], sent_at, msg_ids)
            messages = []
            outbox = Outbox(conn, rt.schema, rt.relay)  # the notification.sent events: one INSERT
            for row, msg_id in zip(rows, msg_ids):
                kind, recipient = NotificationKind(row["kind"]), recipients[row["id"]]
                Emitter(outbox, rt.name, correlation_id=row["request_id"])(NotificationSent(
                    request_id=row["request_id"], kind=kind, channel="email",
                    recipient=mask_email(recipient.email), sent_at=sent_at, due_at=row["due_at"]),
                    key=row["contract_id"])
                content = render(
                    kind, customer_name=recipient.name, request_id=row["request_id"],
                    contract_id=row["contract_id"], effective_date=row["effective_date"],
                    total_jpy=row["total_jpy"], paid_through=row["paid_through"],
                    offers=tuple(row["offers"] or ()), codes=tuple(row["codes"] or ()),
                    earliest_effective_date=row["earliest_effective_date"], days_before=row["days_before"],
                    taken_offer=row["taken_offer"])
                messages.append(mailers[len(messages)].compose(recipient.email, content.subject, content.body, msg_id, {
                    "X-Cancelflow-Request-Id": row["request_id"], "X-Cancelflow-Kind": kind.value,
                    "X-Cancelflow-Due-At": row["due_at"].isoformat()}))
            await outbox.flush()
            used = mailers[:len(rows)]
            # Every mail up to its final "." at once, each on its own connection.
            begun = await asyncio.gather(*(m.begin(msg) for m, msg in zip(used, messages)), return_exceptions=True)
            failed = next((r for r in begun if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            await tx.commit()
            committed = True
            not_ended = []
            for mailer in used:  # the "." of every mail, back to back, right after the commit
                try:
                    mailer.end_data()
                    not_ended.append(None)
                except Exception as exc:  # noqa: BLE001 - the connection broke: this DATA never ended
                    mailer.close()
                    not_ended.append(exc)
            outbox.committed()  # the notification.sent events to the relay
        except BaseException:
            if not committed:
                if outbox is not None:
                    outbox.abandoned()
                for mailer in used:
                    mailer.close()  # abandon every unfinished DATA: the server discards them
                if not conn.is_closed():
                    try:
                        await tx.rollback()
                    except Exception:  # noqa: BLE001 - the connection is gone: PostgreSQL rolled back
                        pass
            raise
        outcomes = await asyncio.gather(*(m.result() if e is None else _failed(e) for m, e in zip(used, not_ended)),
                                        return_exceptions=True)
        refused = [row["id"] for row, o, e in zip(rows, outcomes, not_ended) if isinstance(o, MailRefused) or e]
        if refused:
            # Committed as sent, then refused by the server or never ended (rare): due again. Its
            # notification.sent event is already out; the retry publishes another one for the same
            # (request, kind, due).
            await conn.execute("UPDATE notifications SET status = 'pending', sent_at = NULL WHERE id = ANY($1)",
                               refused)
    for row, outcome in zip(rows, outcomes):
        if not isinstance(outcome, BaseException):
            metrics.NOTIFICATIONS_SENT.labels(row["kind"]).inc()
    error = next((o for o in outcomes if isinstance(o, BaseException)), None)
    if error is not None:
        raise error
    return claimed


async def _failed(error: BaseException) -> None:
    raise error


def dispatch_loop(settings: NotifierSettings):
    async def dispatch(rt: Runtime) -> None:
        workers = [[Mailer(settings) for _ in range(settings.smtp_connections)] for _ in range(WORKERS)]
        keyring = Keyring(settings)
        wake = asyncio.Event()
        listener = None

        def on_notify(*_: object) -> None:
            wake.set()

        async def drain(mailers: list[Mailer]) -> None:
            # A batch that was not full means nothing more was due a moment ago: a NOTIFY wakes us again.
            while await send_batch(rt, mailers, keyring) == len(mailers):
                pass

        async def send_due() -> None:
            nonlocal listener
            try:
                if listener is None or is_lost(listener):
                    if listener is not None:
                        await rt.pool.release(listener, timeout=5)
                        listener = None
                    listener = await rt.pool.acquire()
                    await listener.add_listener(DUE_CHANNEL, on_notify)
                wake.clear()
                # One worker first; the others join only when there is more than a batch to send.
                if await send_batch(rt, workers[0], keyring) == settings.smtp_connections:
                    outcomes = await asyncio.gather(*(drain(m) for m in workers), return_exceptions=True)
                    error = next((o for o in outcomes if isinstance(o, BaseException)), None)
                    if error is not None:
                        raise error
            except Exception:
                for mailers in workers:
                    for mailer in mailers:
                        mailer.close()
                raise

        try:
            while True:
                # SMTP or the database down: the rows stay pending, sent once both answer again.
                await until_it_works("SMTP and the database (dispatch paused)", send_due,
                                     first_s=2 * settings.dispatch_interval_s, most_s=10.0)
                try:
                    await asyncio.wait_for(wake.wait(), settings.dispatch_interval_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            await keyring.close()
            for mailers in workers:
                for mailer in mailers:
                    mailer.close()
            if listener is not None:
                try:
                    if not is_lost(listener):
                        await listener.remove_listener(DUE_CHANNEL, on_notify)
                    await rt.pool.release(listener, timeout=5)
                except Exception:  # noqa: BLE001 - shutting down
                    pass

    return dispatch
