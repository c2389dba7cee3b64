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
them apart). The loop is woken by
`NOTIFY notifier_due` when the consumer schedules something due now, and polls every
`dispatch_interval_s` for what falls due later (reminders, a moved clock).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections import deque
from dataclasses import dataclass
from email.header import Header
from email.mime.text import MIMEText
from email.policy import compat32

import aiosmtplib
from aiosmtplib.email import quote_address

from shared import metrics
from shared.outbox import buffered, emit_from
from shared.events import NotificationSent
from shared.service import Runtime
from shared.vocabulary import NotificationKind

from .domain import mask_email, render
from .handlers import DUE_CHANNEL
from .settings import NotifierSettings

log = logging.getLogger(__name__)

DUE = """
SELECT n.id, n.request_id, n.kind, n.due_at, n.days_before, r.contract_id, r.customer_name, r.email,
       q.effective_date, q.offers, q.codes, q.earliest_effective_date, q.total_jpy, q.paid_through, q.taken_offer
FROM notifications n
JOIN recipients r USING (request_id)
LEFT JOIN requests q USING (request_id)
WHERE n.status = 'pending' AND n.due_at <= $1
ORDER BY n.due_at, n.id
LIMIT $2
FOR UPDATE OF n SKIP LOCKED
"""

MARK_SENT = """
UPDATE notifications AS n SET status = 'sent', sent_at = $2, message_id = u.message_id
FROM unnest($1::bigint[], $3::text[]) AS u(id, message_id)
WHERE n.id = u.id
"""

WORKERS = 2  # dispatch transactions running side by side


def message_id(row) -> str:
    return f"<{row['request_id']}.{row['kind']}.{int(row['due_at'].timestamp())}@cancelflow>"


class MailRefused(RuntimeError):
    """The SMTP server refused the message after it was committed as sent."""


class _Replies(asyncio.Protocol):
    """The connection once aiosmtplib has greeted, secured and logged in: SMTP replies queued in order,
    so pipelined commands (RFC 2920) get theirs however the server's bytes are split into packets."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.replies: deque[tuple[int, str]] = deque()
        self.waiter: asyncio.Future | None = None
        self.lost: Exception | None = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            text, end = [], 0
            while True:
                nl = self.buffer.find(b"\n", end)
                if nl < 0:
                    return self._wake()
                line = bytes(self.buffer[end:nl]).rstrip(b"\r")
                end = nl + 1
                text.append(line[4:].decode("utf-8", "replace"))
                if line[3:4] != b"-":
                    break
            del self.buffer[:end]
            try:
                code = int(line[:3])
            except ValueError:
                code = 0  # not SMTP: fails whatever waits for it
            self.replies.append((code, "\n".join(text)))

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done() and (self.replies or self.lost):
            self.waiter.set_result(None)

    def eof_received(self) -> bool:
        return False  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = aiosmtplib.SMTPServerDisconnected(f"connection lost: {exc}" if exc else "connection lost")
        self._wake()

    def write(self, data: bytes) -> None:
        if self.lost is not None or self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        self.transport.write(data)

    async def reply(self, timeout: float = 10) -> tuple[int, str]:
        while not self.replies:
            if self.lost is not None:
                raise self.lost
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self.waiter, timeout)
            except asyncio.TimeoutError:
                raise aiosmtplib.SMTPReadTimeoutError("no answer from the SMTP server") from None
        return self.replies.popleft()


class Mailer:
    """One SMTP connection, kept open between mails and reopened when it breaks. aiosmtplib connects,
    greets, secures and logs in; the mails themselves go over `_Replies`, MAIL/RCPT/DATA pipelined
    when the server offers PIPELINING (one round trip instead of three)."""

    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self._wire: _Replies | None = None
        self._pipelining = False

    async def _connection(self) -> _Replies:
        if self._wire is not None and self._wire.lost is None and not self._wire.transport.is_closing():
            return self._wire
        self.close()
        s = self.settings
        smtp = aiosmtplib.SMTP(hostname=s.smtp_host, port=s.smtp_port, use_tls=s.smtp_tls,
                               start_tls=s.smtp_starttls, timeout=10)
        await smtp.connect()
        try:
            if s.smtp_username:
                await smtp.login(s.smtp_username, s.smtp_password or "")
            if not smtp.last_ehlo_response:
                await smtp.ehlo()
        except BaseException:
            smtp.close()
            raise
        self._pipelining = smtp.supports_extension("pipelining")
        transport = smtp.transport
        self._wire = _Replies(transport)
        transport.set_protocol(self._wire)
        return self._wire

    def close(self) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.transport.close()

    def compose(self, to: str, subject: str, body: str, msg_id: str, headers: dict[str, str]) -> "Mail":
        """The message as SMTP sends it (see `render_mail`)."""
        return Mail(to, render_mail(self.settings.mail_from, to, subject, body, msg_id, headers))

    async def begin(self, msg: "Mail") -> None:
        """MAIL, RCPT, DATA and the content: everything up to, not including, the final "." of DATA."""
        try:
            wire = await self._connection()
            sender, recipient = self.settings.mail_from, msg.to
            utf8 = not (sender.isascii() and recipient.isascii())
            commands = [b"MAIL FROM:%s%s\r\n" % (quote_address(sender).encode(), b" SMTPUTF8" if utf8 else b""),
                        b"RCPT TO:%s\r\n" % quote_address(recipient).encode(), b"DATA\r\n"]
            if self._pipelining:
                wire.write(b"".join(commands))  # RFC 2920: the three answers come back in order
                answers = [await wire.reply(), await wire.reply(), await wire.reply()]
            else:
                answers = []
                for command in commands:
                    wire.write(command)
                    answers.append(await wire.reply())
                    if answers[-1][0] >= 400:
                        break
            (mail_code, mail_text), *rest = answers
            if mail_code != 250:
                raise aiosmtplib.SMTPSenderRefused(mail_code, mail_text, sender)
            if rest[0][0] not in (250, 251):
                raise aiosmtplib.SMTPRecipientRefused(rest[0][0], rest[0][1], recipient)
            if rest[1][0] != 354:
                raise aiosmtplib.SMTPDataError(rest[1][0], rest[1][1])
            content = _dot_stuffed(msg.content)
            wire.write(content)
        except BaseException:
            self.close()  # a half-sent DATA must never be completed by a later mail
            raise

    def end_data(self) -> None:
        """Write the final "." (no await: called right after the commit)."""
        if self._wire is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        self._wire.write(b".\r\n")

    async def result(self) -> None:
        """The server's answer to the end of DATA; MailRefused unless it accepted the mail."""
        try:
            if self._wire is None:
                raise aiosmtplib.SMTPServerDisconnected("connection lost")
            code, text = await self._wire.reply()
            if code != 250:
                raise MailRefused(f"{code} {text}")
        except BaseException:
            self.close()
            raise

    async def send(self, msg: "Mail", commit) -> None:
        """Send `msg`, calling `commit()` after the content and before the end of DATA (see module doc)."""
        await self.begin(msg)
        try:
            await commit()
            self.end_data()
        except BaseException:
            self.close()
            raise
        await self.result()


@dataclass(frozen=True)
class Mail:
    to: str
    content: bytes  # RFC 5322 with CRLF line ends; dot-stuffing and the last CRLF come when it is sent


# Lines end in CRLF on the wire (RFC 5321); the body's own line breaks are converted by the policy.
_SMTP_POLICY = compat32.clone(linesep="\r\n")
_MAX_LINE = 998  # RFC 5322 2.1.1
_WORD_BYTES = 45  # UTF-8 bytes per encoded word: base64 of 45 -> 60 chars, "=?utf-8?b?...?=" stays <= 75


def render_mail(sender: str, to: str, subject: str, body: str, msg_id: str, headers: dict[str, str]) -> bytes:
    """A text/plain message, written directly: what `email.mime.text.MIMEText` with the compat32 policy
    produces for these messages (same headers, RFC 2047 subject, base64 body when not ASCII), at a
    fraction of its cost (its header folding was a sixth of the notifier's time). Anything unusual
    (a header line longer than RFC 5322 allows, a very long ASCII body line) goes through the stdlib."""
    for value in (to, subject, msg_id, *headers.values()):
        if "\r" in value or "\n" in value:
            raise ValueError("a header value must not contain a line break")
    ascii_body = body.isascii()
    lines = [f"Content-Type: text/plain; charset=\"{'us-ascii' if ascii_body else 'utf-8'}\"", "MIME-Version: 1.0",
             f"Content-Transfer-Encoding: {'7bit' if ascii_body else 'base64'}", f"From: {sender}", f"To: {to}",
             f"Subject: {subject if subject.isascii() else _encoded_words(subject)}", f"Message-ID: {msg_id}",
             *(f"{k}: {v}" for k, v in headers.items())]
    if ascii_body:
        text = body.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        if any(len(line) > _MAX_LINE for line in text):
            return _render_with_stdlib(sender, to, subject, body, msg_id, headers)
        payload = "\r\n".join(text)
    else:
        payload = base64.encodebytes(body.encode()).decode("ascii").replace("\n", "\r\n")
    if any(len(line) > _MAX_LINE or not line.isascii() for line in lines):
        return _render_with_stdlib(sender, to, subject, body, msg_id, headers)
    return ("\r\n".join(lines) + "\r\n\r\n" + payload).encode("ascii")


def _encoded_words(text: str) -> str:
    """RFC 2047 B-encoded words of at most `_WORD_BYTES` UTF-8 bytes each (never splitting a character),
    folded one per line."""
    words, chunk, size = [], [], 0
    for ch in text:
        n = len(ch.encode())
        if size + n > _WORD_BYTES:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(ch)
        size += n
    words.append("".join(chunk))
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w.encode()).decode('ascii')}?=" for w in words)


def _render_with_stdlib(sender: str, to: str, subject: str, body: str, msg_id: str, headers: dict[str, str]) -> bytes:
    msg = MIMEText(body, "plain", "us-ascii" if body.isascii() else "utf-8")
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject if subject.isascii() else Header(subject, "utf-8")
    msg["Message-ID"] = msg_id
    for key, value in headers.items():
        msg[key] = value
    return msg.as_bytes(policy=_SMTP_POLICY)


def _dot_stuffed(content: bytes) -> bytes:
    """RFC 5321 4.5.2: a line starting with "." gets one more; the content ends with CRLF."""
    if content.startswith(b"."):
        content = b"." + content
    content = content.replace(b"\r\n.", b"\r\n..")
    return content if content.endswith(b"\r\n") else content + b"\r\n"


async def send_batch(rt: Runtime, mailers: list[Mailer]) -> int:
    """Claim up to len(mailers) due rows in one transaction and send them at once; 0 when nothing is due."""
    async with rt.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        committed = False
        outbox = None
        used: list[Mailer] = []
        try:
            rows = await conn.fetch(DUE, rt.clock.now(), len(mailers))
            if not rows:
                await tx.rollback()
                return 0
            sent_at = rt.clock.now()
            msg_ids = [message_id(row) for row in rows]
            await conn.execute(MARK_SENT, [row["id"] for row in rows], sent_at, msg_ids)
            messages = []
            async with buffered(conn, rt.schema, rt.relay) as outbox:  # the notification.sent events: one INSERT
                for row, msg_id in zip(rows, msg_ids):
                    kind = NotificationKind(row["kind"])
                    await emit_from(conn, rt, NotificationSent(
                        request_id=row["request_id"], kind=kind, channel="email",
                        recipient=mask_email(row["email"]), sent_at=sent_at, due_at=row["due_at"]),
                        key=row["contract_id"], correlation_id=row["request_id"])
                    content = render(
                        kind, customer_name=row["customer_name"], request_id=row["request_id"],
                        contract_id=row["contract_id"], effective_date=row["effective_date"],
                        total_jpy=row["total_jpy"], paid_through=row["paid_through"],
                        offers=tuple(row["offers"] or ()), codes=tuple(row["codes"] or ()),
                        earliest_effective_date=row["earliest_effective_date"], days_before=row["days_before"],
                        taken_offer=row["taken_offer"])
                    messages.append(mailers[len(messages)].compose(row["email"], content.subject, content.body, msg_id, {
                        "X-Cancelflow-Request-Id": row["request_id"], "X-Cancelflow-Kind": kind.value,
                        "X-Cancelflow-Due-At": row["due_at"].isoformat()}))
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
    return len(rows)


async def _failed(error: BaseException) -> None:
    raise error


def dispatch_loop(settings: NotifierSettings):
    async def dispatch(rt: Runtime) -> None:
        workers = [[Mailer(settings) for _ in range(settings.smtp_connections)] for _ in range(WORKERS)]
        wake = asyncio.Event()
        listener = None
        delay = settings.dispatch_interval_s

        def on_notify(*_: object) -> None:
            wake.set()

        async def drain(mailers: list[Mailer]) -> None:
            # A batch that was not full means nothing more was due a moment ago: a NOTIFY wakes us again.
            while await send_batch(rt, mailers) == len(mailers):
                pass

        try:
            while True:
                try:
                    if listener is None or listener.is_closed():
                        if listener is not None:
                            await rt.pool.release(listener, timeout=5)
                            listener = None
                        listener = await rt.pool.acquire()
                        await listener.add_listener(DUE_CHANNEL, on_notify)
                    wake.clear()
                    # One worker first; the others join only when there is more than a batch to send.
                    if await send_batch(rt, workers[0]) == settings.smtp_connections:
                        outcomes = await asyncio.gather(*(drain(m) for m in workers), return_exceptions=True)
                        error = next((o for o in outcomes if isinstance(o, BaseException)), None)
                        if error is not None:
                            raise error
                    delay = settings.dispatch_interval_s
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - SMTP or DB down: the rows stay pending, retried later
                    for mailers in workers:
                        for mailer in mailers:
                            mailer.close()
                    log.warning("dispatch paused: %s: %s", type(exc).__name__, exc)
                    delay = min(delay * 2, 10.0)
                    await asyncio.sleep(delay)
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        finally:
            for mailers in workers:
                for mailer in mailers:
                    mailer.close()
            if listener is not None:
                try:
                    if not listener.is_closed():
                        await listener.remove_listener(DUE_CHANNEL, on_notify)
                    await rt.pool.release(listener, timeout=5)
                except Exception:  # noqa: BLE001 - shutting down
                    pass

    return dispatch
