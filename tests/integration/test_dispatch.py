"""The notifier's send is decided by the database commit: a real SMTP server stores the mail only if the
commit, made between the content and the end of DATA, succeeded. Against two servers: aiosmtpd (third
party, no PIPELINING: one command per round trip) and the project's own sink (PIPELINING)."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.controller import Controller

from cancelflow.infra.mailsink import Maildir, read_mail, serve
from cancelflow.infra.ports import free_port
from services.notifier.smtp_client import Mailer
from services.notifier.settings import NotifierSettings


class MaildirHandler:
    """aiosmtpd's hook: a message it accepted goes to the same maildir as the project's own sink's."""

    def __init__(self, directory) -> None:
        self.maildir = Maildir(directory)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        self.maildir.store(envelope.original_content or envelope.content)
        return "250 Message accepted for delivery"


@pytest.fixture(params=["aiosmtpd", "mailsink"])
async def smtp(request, tmp_path):
    port = free_port()
    if request.param == "aiosmtpd":
        controller = Controller(MaildirHandler(tmp_path / "mail"), hostname="127.0.0.1", port=port)
        controller.start()
        yield port, tmp_path / "mail"
        controller.stop()
    else:
        server = await serve("127.0.0.1", port, tmp_path / "mail")
        yield port, tmp_path / "mail"
        server.close()
        await server.wait_closed()


async def test_mail_is_delivered_only_after_the_commit_and_discarded_when_it_fails(smtp):
    port, mail_dir = smtp
    mailer = Mailer(NotifierSettings(smtp_port=port))
    msg = lambda n: mailer.compose(f"t{n}@example.jp", f"subject {n}", "body\n.\nline after a lone dot",  # noqa: E731
                                   f"<m{n}@cancelflow>", {"X-Cancelflow-Kind": "acknowledgement"})

    async def failing_commit() -> None:
        raise ConnectionError("database went away")

    with pytest.raises(ConnectionError):
        await mailer.send(msg(1), failing_commit)
    await asyncio.sleep(0.3)
    assert read_mail(mail_dir) == [], "DATA never ended: the server discarded the message"

    seen_at_commit = []

    async def commit() -> None:
        seen_at_commit.append(len(read_mail(mail_dir)))

    await mailer.send(msg(2), commit)
    await mailer.send(msg(3), commit)  # the connection is reused
    mails = read_mail(mail_dir)
    assert seen_at_commit == [0, 1], "the commit comes before the server has the message"
    assert [m.subject for m in mails] == ["subject 2", "subject 3"]
    assert "\n.\nline after a lone dot" in mails[0].body.replace("\r\n", "\n")  # dot-stuffing kept it intact
    mailer.close()
