"""The notifier's send is decided by the database commit: a real SMTP server (aiosmtpd) stores the
mail only if the commit, made between the content and the end of DATA, succeeded."""

from __future__ import annotations

import asyncio

import pytest
from aiosmtpd.controller import Controller

from cancelflow.infra.mailsink import MaildirHandler, read_mail
from cancelflow.infra.ports import free_port
from services.notifier.dispatch import Mailer
from services.notifier.settings import NotifierSettings


@pytest.fixture
def smtp(tmp_path):
    port = free_port()
    controller = Controller(MaildirHandler(tmp_path / "mail"), hostname="127.0.0.1", port=port)
    controller.start()
    yield port, tmp_path / "mail"
    controller.stop()


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
