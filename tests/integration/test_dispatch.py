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


async def test_a_burst_of_due_reminders_does_not_hold_back_an_acknowledgement(infra):
    """10:00 Tokyo makes a day's 14- and 3-day reminders due at once: the dispatcher claims what a customer
    just did (the acknowledgement, due later than every reminder) first, then the oldest reminders."""
    from datetime import datetime, timedelta, timezone
    from pathlib import Path

    import asyncpg

    from services.notifier.dispatch import claim_due
    from shared.db import migrate

    schema = "notifier_lanes_test"
    repo = Path(__file__).resolve().parents[2]
    conn = await asyncpg.connect(infra.database_url)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await migrate(infra.database_url, schema, repo / "services" / "notifier", service="notifier")
        await conn.execute(f"SET search_path TO {schema}")
        now = datetime(2027, 3, 1, 1, 0, tzinfo=timezone.utc)
        await conn.executemany("INSERT INTO recipients VALUES ($1, 'C-1', '山田', 'a@example.jp')",
                               [(f"R{i}",) for i in range(201)])
        await conn.executemany(
            "INSERT INTO notifications (request_id, kind, due_at, days_before) VALUES ($1, $2, $3, $4)",
            [(f"R{i}", "data_export_reminder", now - timedelta(hours=1, seconds=i), 14) for i in range(200)]
            + [("R200", "acknowledgement", now - timedelta(seconds=1), None),
               ("R200", "data_export_reminder", now + timedelta(days=3), 3)])  # not due yet
        async with conn.transaction():
            first = await claim_due(conn, now, 4)
        assert [r["kind"] for r in first] == ["acknowledgement", *["data_export_reminder"] * 3]
        assert [r["request_id"] for r in first[1:]] == ["R199", "R198", "R197"]  # then the oldest reminders
        async with conn.transaction():
            assert len(await claim_due(conn, now, 500)) == 201  # the one due in 3 days is not claimed
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()
