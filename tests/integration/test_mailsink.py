"""The project's SMTP sink: what it stores, when, and how it answers pipelined commands."""

from __future__ import annotations

import asyncio
from email.mime.text import MIMEText

import aiosmtplib
import pytest

from cancelflow.infra.mailsink import read_mail, serve
from cancelflow.infra.ports import free_port
from services.notifier.smtp_client import Mailer
from services.notifier.settings import NotifierSettings


@pytest.fixture
async def sink(tmp_path):
    port = free_port()
    server = await serve("127.0.0.1", port, tmp_path / "mail")
    yield port, tmp_path / "mail"
    server.close()
    await server.wait_closed()


async def _talk(port: int, data: bytes, replies: int) -> list[bytes]:
    """Write `data` at once; read `replies` SMTP replies (multi-line ones whole) after the greeting."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    greeting = await reader.readline()
    assert greeting.startswith(b"220 ")
    writer.write(data)
    out = []
    for _ in range(replies):
        lines = [await asyncio.wait_for(reader.readline(), 5)]
        while lines[-1][3:4] == b"-":
            lines.append(await reader.readline())
        out.append(b"".join(lines))
    writer.close()
    return out


async def test_a_third_party_client_delivers_and_the_message_reads_back_intact(sink):
    port, mail_dir = sink
    msg = MIMEText("first line\n.\n..two dots\nlast", "plain", "utf-8")
    msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "a@example.jp", "b@example.jp", "件名", "<x1@t>"
    await aiosmtplib.send(msg, hostname="127.0.0.1", port=port)
    [mail] = read_mail(mail_dir)
    assert (mail.to, mail.subject, mail.message_id) == ("b@example.jp", "件名", "<x1@t>")
    assert mail.body.replace("\r\n", "\n") == "first line\n.\n..two dots\nlast"


async def test_pipelined_commands_are_answered_in_order(sink):
    port, mail_dir = sink
    replies = await _talk(port, b"EHLO t\r\nMAIL FROM:<a@x.jp>\r\nRCPT TO:<b@x.jp>\r\nDATA\r\n"
                                b"Subject: s\r\n\r\nhi\r\n.\r\nQUIT\r\n", 6)
    assert replies[0].startswith(b"250-") and b"250-PIPELINING\r\n" in replies[0]
    assert [r[:3] for r in replies[1:]] == [b"250", b"250", b"354", b"250", b"221"]
    assert [m.subject for m in read_mail(mail_dir)] == ["s"]


async def test_commands_out_of_order_are_refused_and_nothing_is_stored(sink):
    port, mail_dir = sink
    replies = await _talk(port, b"EHLO t\r\nDATA\r\nRCPT TO:<b@x.jp>\r\nMAIL FROM:<a@x.jp>\r\nMAIL FROM:<a@x.jp>\r\n"
                                b"RCPT TO:nobody\r\nSTARTTLS\r\n", 7)
    assert [r[:3] for r in replies[1:]] == [b"503", b"503", b"250", b"503", b"501", b"502"]
    assert read_mail(mail_dir) == []


async def test_a_connection_lost_in_the_middle_of_data_leaves_nothing(sink):
    port, mail_dir = sink
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(b"HELO t\r\nMAIL FROM:<a@x.jp>\r\nRCPT TO:<b@x.jp>\r\nDATA\r\nSubject: half\r\n\r\nno end")
    for _ in range(4):
        await reader.readline()
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.2)
    assert read_mail(mail_dir) == []
    assert not list(mail_dir.iterdir()), "no temporary file either"


async def test_the_notifier_pipelines_and_the_commit_comes_before_the_server_has_the_mail(sink):
    port, mail_dir = sink
    mailer = Mailer(NotifierSettings(smtp_port=port))
    seen_at_commit = []

    async def commit() -> None:
        seen_at_commit.append(len(read_mail(mail_dir)))

    for n in range(3):
        await mailer.send(mailer.compose(f"t{n}@example.jp", f"s{n}", "body", f"<m{n}@t>", {}), commit)
    assert mailer._pipelining, "the sink offers PIPELINING and the notifier uses it"
    assert seen_at_commit == [0, 1, 2]
    assert [m.subject for m in read_mail(mail_dir)] == ["s0", "s1", "s2"]
    mailer.close()
