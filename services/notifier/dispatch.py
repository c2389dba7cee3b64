"""Sending what is due: one notification per transaction, claimed with a row lock while it is sent.

The row is marked sent and `notification.sent` is queued in the same transaction that held the lock,
so a notification is sent once across restarts. The one window left, a crash after the SMTP server
accepted the mail and before the commit, resends it with the same Message-ID, which lets a receiving
system drop the copy.
"""

from __future__ import annotations

import asyncio
import logging
from email.message import EmailMessage

import aiosmtplib

from shared import metrics
from shared.outbox import emit_from
from shared.events import NotificationSent
from shared.service import Runtime
from shared.vocabulary import NotificationKind

from .domain import mask_email, render
from .settings import NotifierSettings

log = logging.getLogger(__name__)

DUE = """
SELECT n.id, n.request_id, n.kind, n.due_at, n.days_before, r.contract_id, r.customer_name, r.email,
       q.effective_date, q.offers, q.codes, q.earliest_effective_date, q.total_jpy, q.paid_through
FROM notifications n
JOIN recipients r USING (request_id)
LEFT JOIN requests q USING (request_id)
WHERE n.status = 'pending' AND n.due_at <= $1
ORDER BY n.due_at, n.id
LIMIT 1
FOR UPDATE OF n SKIP LOCKED
"""


def message_id(row) -> str:
    return f"<{row['request_id']}.{row['kind']}.{int(row['due_at'].timestamp())}@cancelflow>"


class Mailer:
    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings

    async def send(self, to: str, subject: str, body: str, msg_id: str, headers: dict[str, str]) -> None:
        s = self.settings
        msg = EmailMessage()
        msg["From"] = s.mail_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Message-ID"] = msg_id
        for key, value in headers.items():
            msg[key] = value
        msg.set_content(body)
        await aiosmtplib.send(msg, hostname=s.smtp_host, port=s.smtp_port, use_tls=s.smtp_tls,
                              start_tls=s.smtp_starttls, username=s.smtp_username, password=s.smtp_password,
                              timeout=10)


async def send_due(rt: Runtime, mailer: Mailer, limit: int = 100) -> int:
    """Send up to `limit` due notifications; returns how many went out."""
    sent = 0
    while sent < limit:
        async with rt.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(DUE, rt.clock.now())
            if row is None:
                return sent
            kind = NotificationKind(row["kind"])
            content = render(
                kind, customer_name=row["customer_name"], request_id=row["request_id"],
                contract_id=row["contract_id"], effective_date=row["effective_date"], total_jpy=row["total_jpy"],
                paid_through=row["paid_through"], offers=tuple(row["offers"] or ()), codes=tuple(row["codes"] or ()),
                earliest_effective_date=row["earliest_effective_date"], days_before=row["days_before"])
            msg_id = message_id(row)
            await mailer.send(row["email"], content.subject, content.body, msg_id, {
                "X-Cancelflow-Request-Id": row["request_id"], "X-Cancelflow-Kind": kind.value,
                "X-Cancelflow-Due-At": row["due_at"].isoformat()})
            sent_at = rt.clock.now()
            await conn.execute("UPDATE notifications SET status = 'sent', sent_at = $2, message_id = $3 WHERE id = $1",
                               row["id"], sent_at, msg_id)
            await emit_from(conn, rt, NotificationSent(
                request_id=row["request_id"], kind=kind, channel="email", recipient=mask_email(row["email"]),
                sent_at=sent_at, due_at=row["due_at"]), key=row["contract_id"], correlation_id=row["request_id"])
        metrics.NOTIFICATIONS_SENT.labels(kind.value).inc()
        sent += 1
    return sent


def dispatch_loop(settings: NotifierSettings):
    mailer = Mailer(settings)

    async def dispatch(rt: Runtime) -> None:
        delay = settings.dispatch_interval_s
        while True:
            try:
                await send_due(rt, mailer)
                delay = settings.dispatch_interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - SMTP or DB down: the row stays pending, retried later
                log.warning("dispatch paused: %s: %s", type(exc).__name__, exc)
                delay = min(delay * 2, 10.0)
            await asyncio.sleep(delay)

    return dispatch
