"""Sending what is due, each notification exactly once across crashes.

A due row is locked (FOR UPDATE SKIP LOCKED), marked sent and its `notification.sent` queued in the
outbox, all in one open transaction. The mail then goes over SMTP up to, but not including, the final
"." of DATA; only then is the transaction committed, and the "." sent. SMTP servers discard a message
whose DATA never ended, so:
- a crash before the commit leaves the row pending and the half-sent mail discarded: sent again later;
- the commit succeeded: the "." follows at once (no round trip in between). If the server then refuses
  the mail, the row is put back to pending.
The remaining window, a crash between PostgreSQL's commit and writing five bytes, is a single
syscall long. The Message-ID is deterministic, so even then a receiving system could drop a copy.
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


class MailRefused(RuntimeError):
    """The SMTP server refused the message after it was committed as sent."""


class Mailer:
    """One SMTP connection, kept open between mails and reopened when it breaks."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self._smtp: aiosmtplib.SMTP | None = None

    async def _connection(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and self._smtp.is_connected:
            return self._smtp
        s = self.settings
        smtp = aiosmtplib.SMTP(hostname=s.smtp_host, port=s.smtp_port, use_tls=s.smtp_tls,
                               start_tls=s.smtp_starttls, timeout=10)
        await smtp.connect()
        if s.smtp_username:
            await smtp.login(s.smtp_username, s.smtp_password or "")
        self._smtp = smtp
        return smtp

    def close(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
            self._smtp = None

    def compose(self, to: str, subject: str, body: str, msg_id: str, headers: dict[str, str]) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.settings.mail_from
        msg["To"] = to
        msg["Subject"] = subject
        msg["Message-ID"] = msg_id
        for key, value in headers.items():
            msg[key] = value
        msg.set_content(body)
        return msg

    async def send(self, msg: EmailMessage, commit) -> None:
        """Send `msg`, calling `commit()` after the content and before the end of DATA (see module doc)."""
        from aiosmtplib.email import flatten_message
        from aiosmtplib.protocol import PERIOD_REGEX
        from aiosmtplib.smtp import normalize_message_line_endings

        smtp = await self._connection()
        try:
            await smtp.mail(self.settings.mail_from)
            await smtp.rcpt(str(msg["To"]))
            content = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(flatten_message(msg)))
            if not content.endswith(b"\r\n"):
                content += b"\r\n"
            # aiosmtplib (pinned <6) sends DATA, content and "." in one call; this is that call, split.
            proto = smtp.protocol
            async with proto._command_lock:
                proto._response_pending = True
                proto.write(b"DATA\r\n")
                start = await proto.read_response(timeout=10)
                if start.code != 354:
                    raise aiosmtplib.SMTPDataError(start.code, start.message)
                proto.write(content)
                await commit()
                proto._response_pending = True
                proto.write(b".\r\n")
                done = await proto.read_response(timeout=10)
            if done.code != 250:
                raise MailRefused(f"{done.code} {done.message}")
        except BaseException:
            self.close()  # a half-sent DATA must never be completed by a later mail
            raise


async def send_due(rt: Runtime, mailer: Mailer, limit: int = 100) -> int:
    """Send up to `limit` due notifications; returns how many went out."""
    sent = 0
    while sent < limit:
        async with rt.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            committed = False

            async def commit() -> None:
                nonlocal committed
                await tx.commit()
                committed = True

            try:
                row = await conn.fetchrow(DUE, rt.clock.now())
                if row is None:
                    await tx.rollback()
                    return sent
                kind = NotificationKind(row["kind"])
                content = render(
                    kind, customer_name=row["customer_name"], request_id=row["request_id"],
                    contract_id=row["contract_id"], effective_date=row["effective_date"], total_jpy=row["total_jpy"],
                    paid_through=row["paid_through"], offers=tuple(row["offers"] or ()),
                    codes=tuple(row["codes"] or ()), earliest_effective_date=row["earliest_effective_date"],
                    days_before=row["days_before"])
                msg_id = message_id(row)
                sent_at = rt.clock.now()
                await conn.execute(
                    "UPDATE notifications SET status = 'sent', sent_at = $2, message_id = $3 WHERE id = $1",
                    row["id"], sent_at, msg_id)
                await emit_from(conn, rt, NotificationSent(
                    request_id=row["request_id"], kind=kind, channel="email", recipient=mask_email(row["email"]),
                    sent_at=sent_at, due_at=row["due_at"]), key=row["contract_id"], correlation_id=row["request_id"])
                msg = mailer.compose(row["email"], content.subject, content.body, msg_id, {
                    "X-Cancelflow-Request-Id": row["request_id"], "X-Cancelflow-Kind": kind.value,
                    "X-Cancelflow-Due-At": row["due_at"].isoformat()})
                await mailer.send(msg, commit)
            except MailRefused:
                # Committed as sent, then refused by the server (rare): due again. Its notification.sent
                # event is already out; the retry publishes another one for the same (request, kind, due).
                await conn.execute("UPDATE notifications SET status = 'pending', sent_at = NULL WHERE id = $1",
                                   row["id"])
                raise
            except BaseException:
                if not committed and not conn.is_closed():
                    try:
                        await tx.rollback()
                    except Exception:  # noqa: BLE001 - the connection is gone: PostgreSQL rolled back
                        pass
                raise
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
                mailer.close()
                log.warning("dispatch paused: %s: %s", type(exc).__name__, exc)
                delay = min(delay * 2, 10.0)
            await asyncio.sleep(delay)

    return dispatch
