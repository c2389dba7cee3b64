"""The notifier's SMTP client: one kept-open connection that can hold a mail's DATA open.

`Mailer.begin` sends MAIL, RCPT, DATA and the content, everything but the final "."; `end_data` writes
the "." (without awaiting) and `result` reads the server's answer. A server discards a message whose DATA
never ended, so a mail that fails before its "." is certainly not sent (dispatch.py puts it back due). aiosmtplib connects, greets, secures (TLS, STARTTLS) and
logs in; the mails then go over `_Replies`, with MAIL/RCPT/DATA pipelined (RFC 2920) when the server
offers it. Why not aiosmtplib for the mails as well: it does not pipeline, its API holds DATA open only by
writing on its protocol object, and doing this job it sends about half as many mails per second at twice
the CPU per mail (bench/smtp_client.py, figures in docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib.email import quote_address

from .mime import render_mail
from .settings import NotifierSettings

__all__ = ["Mail", "MailRefused", "Mailer", "dot_stuffed"]


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
                await smtp.login(s.smtp_username, s.smtp_password.get_secret_value() if s.smtp_password else "")
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
            content = dot_stuffed(msg.content)
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
        """Send `msg`, calling `commit()` after the content and before the end of DATA (see the module doc)."""
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


def dot_stuffed(content: bytes) -> bytes:
    """RFC 5321 4.5.2: a line starting with "." gets one more; the content ends with CRLF."""
    if content.startswith(b"."):
        content = b"." + content
    content = content.replace(b"\r\n.", b"\r\n..")
    return content if content.endswith(b"\r\n") else content + b"\r\n"
