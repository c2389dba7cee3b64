"""A small real SMTP server that keeps every message it receives as an .eml file.

The notifier talks SMTP to it exactly as it would to a production relay; tests and the demo read the
mail back from the directory. Run: python -m cancelflow.infra.mailsink --port 10025 --dir .stack/mail

It stands in for the mail provider, which in production runs on other machines; on a benchmark box it
shares the two cores with the pipeline, so it is an asyncio protocol of its own (RFC 5321 with
PIPELINING, no TLS or AUTH) that costs a fraction of aiosmtpd per message. aiosmtpd, a third-party
server, is still what the notifier's SMTP client is tested against (tests/integration/test_dispatch.py).

What matters for the notifier's guarantees: a message exists only once its DATA ended with "." and the
server answered 250; a connection that drops in the middle of DATA leaves nothing behind.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.parser
import email.policy
import itertools
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
MAX_LINE_BYTES = 4096  # a command line; RFC 5321 asks for at least 512

_EHLO = (b"250-%s\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE " + str(MAX_MESSAGE_BYTES).encode()
         + b"\r\n")


class Maildir:
    """Where accepted messages go: one file each, written whole under a temporary name, then renamed, so a
    reader never sees half a message. Names sort in arrival order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._seq = itertools.count()
        self._pid = os.getpid()

    def store(self, content: bytes) -> None:
        name = f"{time.time_ns()}-{self._pid}-{next(self._seq):09d}.eml"
        tmp = os.path.join(self.directory, name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.directory, name))


class SMTPSession(asyncio.Protocol):
    """One client connection. Pipelined commands are answered together, in order, with one write."""

    def __init__(self, maildir: Maildir, hostname: bytes) -> None:
        self.maildir = maildir
        self.hostname = hostname
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.in_data = False
        self.sender: bytes | None = None
        self.recipients = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(b"220 %s ESMTP cancelflow mailsink\r\n" % self.hostname)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        replies: list[bytes] = []
        while self.transport is not None and not self.transport.is_closing():
            if self.in_data:
                if not self._take_message(replies):
                    break
                continue
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > MAX_LINE_BYTES:
                    replies.append(b"500 5.5.2 line too long\r\n")
                    self.buffer.clear()
                break
            line = bytes(self.buffer[:end]).rstrip(b"\r")
            del self.buffer[:end + 1]
            reply = self._command(line)
            replies.append(reply)
            if reply.startswith(b"221"):
                self.transport.write(b"".join(replies))
                self.transport.close()
                return
        if replies and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(replies))

    def _take_message(self, replies: list[bytes]) -> bool:
        """The message, if its terminating "." has arrived: stored and answered; False while incomplete."""
        if self.buffer.startswith(b".\r\n"):
            end, skip = 0, 3  # an empty message
        else:
            end = self.buffer.find(b"\r\n.\r\n")
            if end < 0:
                if len(self.buffer) > MAX_MESSAGE_BYTES:
                    self.buffer.clear()
                    self._reset()
                    replies.append(b"552 5.3.4 message too big\r\n")
                    self.transport.write(b"".join(replies))  # type: ignore[union-attr]
                    self.transport.close()  # type: ignore[union-attr]
                return False
            end, skip = end + 2, 3  # the content keeps its last CRLF; ".\r\n" goes
        content = bytes(self.buffer[:end])
        del self.buffer[:end + skip]
        # Undo dot-stuffing (RFC 5321 4.5.2): a line starting with "." was sent with one more.
        if content.startswith(b".."):
            content = content[1:]
        content = content.replace(b"\r\n..", b"\r\n.")
        self._reset()
        try:
            self.maildir.store(content)
        except OSError as exc:
            replies.append(b"451 4.3.0 not stored: %s\r\n" % type(exc).__name__.encode())
        else:
            replies.append(b"250 2.0.0 message accepted for delivery\r\n")
        return True

    def _reset(self) -> None:
        self.in_data = False
        self.sender = None
        self.recipients = 0

    def _command(self, line: bytes) -> bytes:
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb == b"EHLO":
            self._reset()
            return _EHLO % self.hostname
        if verb == b"HELO":
            self._reset()
            return b"250 %s\r\n" % self.hostname
        if verb == b"MAIL":
            if not arg.upper().startswith(b"FROM:"):
                return b"501 5.5.4 syntax: MAIL FROM:<address>\r\n"
            if self.sender is not None:
                return b"503 5.5.1 sender already given\r\n"
            self.sender = arg[5:].strip()
            return b"250 2.1.0 OK\r\n"
        if verb == b"RCPT":
            if self.sender is None:
                return b"503 5.5.1 need MAIL first\r\n"
            if not arg.upper().startswith(b"TO:") or b"@" not in arg:
                return b"501 5.5.4 syntax: RCPT TO:<address>\r\n"
            self.recipients += 1
            return b"250 2.1.5 OK\r\n"
        if verb == b"DATA":
            if not self.recipients:
                return b"503 5.5.1 need RCPT first\r\n"
            self.in_data = True
            return b"354 end data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"RSET":
            self._reset()
            return b"250 2.0.0 OK\r\n"
        if verb == b"NOOP":
            return b"250 2.0.0 OK\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 bye\r\n"
        if verb == b"VRFY":
            return b"252 2.0.0 cannot verify, will accept\r\n"
        return b"502 5.5.2 command not implemented\r\n"

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.buffer.clear()  # an unfinished DATA is discarded: that message was never accepted


async def serve(host: str, port: int, directory: Path) -> asyncio.Server:
    maildir = Maildir(directory)
    hostname = b"cancelflow-mailsink"
    return await asyncio.get_running_loop().create_server(lambda: SMTPSession(maildir, hostname), host, port)


@dataclass(frozen=True)
class StoredMail:
    to: str
    subject: str
    message_id: str
    headers: dict[str, str]
    body: str


def read_mail(directory: Path) -> list[StoredMail]:
    """Every message received so far, oldest first."""
    out = []
    if not directory.exists():
        return out
    for path in sorted(directory.glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        out.append(StoredMail(
            to=str(msg["To"]), subject=str(msg["Subject"]), message_id=str(msg["Message-ID"]),
            headers={k: str(v) for k, v in msg.items()},
            body=body.get_content() if body is not None else "",
        ))
    return out


def read_mail_headers(directory: Path) -> list[dict[str, str]]:
    """The headers of every message received so far, oldest first, bodies not parsed: a thirtieth of
    `read_mail`'s time, for counting a chaos run's hundreds of thousands of messages."""
    if not directory.exists():
        return []
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    return [dict(parser.parsebytes(path.read_bytes()).items()) for path in sorted(directory.glob("*.eml"))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 inside a container")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()

    async def run() -> None:
        server = await serve(args.host, args.port, args.dir)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
