"""The notifier's send is decided by the database commit: a real SMTP server stores the mail only if the
commit, made between the content and the end of DATA, succeeded. Against two servers: aiosmtpd (third
party, no PIPELINING: one command per round trip) and the project's own sink (PIPELINING)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiosmtpd.controller import Controller

from cancelflow.infra.mailsink import Maildir, read_mail, serve
from cancelflow.infra.ports import free_port
from services.notifier.smtp_client import Mailer
from services.notifier.settings import NotifierSettings
from tests.integration.own_database import wal_fsyncs


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


@pytest.fixture
async def notifier_schema(infra):
    """A connection to a schema of its own with notifier's migrations applied (dropped afterwards)."""
    import uuid
    from pathlib import Path

    import asyncpg

    from shared.db import migrate

    schema = f"notifier_dispatch_{uuid.uuid4().hex[:8]}"
    repo = Path(__file__).resolve().parents[2]
    conn = await asyncpg.connect(infra.database_url)
    try:
        await migrate(infra.database_url, schema, repo / "services" / "notifier", service="notifier")
        await conn.execute(f"SET search_path TO {schema}")
        yield conn
    finally:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.close()


async def test_a_burst_of_due_reminders_does_not_hold_back_an_acknowledgement(notifier_schema):
    """10:00 Tokyo makes a day's 14- and 3-day reminders due at once: the dispatcher claims what a customer
    just did (the acknowledgement, due later than every reminder) first, then the oldest reminders."""
    from datetime import datetime, timedelta, timezone

    from services.notifier.dispatch import claim_due

    conn = notifier_schema
    now = datetime(2027, 3, 1, 1, 0, tzinfo=timezone.utc)
    await conn.executemany("INSERT INTO recipients VALUES ($1, 'C-1', '山田', 'a@example.jp')",
                           [(f"R{i}",) for i in range(201)])
    await conn.executemany(
        "INSERT INTO notifications (request_id, kind, due_at, days_before) VALUES ($1, $2, $3, $4)",
        [(f"R{i}", "data_export_reminder", now - timedelta(hours=1, seconds=i), 14) for i in range(200)]
        + [("R200", "acknowledgement", now - timedelta(seconds=1), None),
           ("R200", "data_export_reminder", now + timedelta(days=3), 3)])  # not due yet
    tx = conn.transaction()
    await tx.start()
    first = await claim_due(conn, now, 4, 60)
    await tx.rollback()  # the claim marks its queue rows claimed: undone, to claim them all below
    assert [r["kind"] for r in first] == ["acknowledgement", *["data_export_reminder"] * 3]
    assert [r["request_id"] for r in first[1:]] == ["R199", "R198", "R197"]  # then the oldest reminders
    assert len(await claim_due(conn, now, 500, 60)) == 201  # the one due in 3 days is not claimed
    assert await claim_due(conn, now, 500, 60) == []  # claimed: not due again within the lease
    # A lease run out (its notifier died before the confirmation): claimed again, before anything due.
    await conn.execute("UPDATE notification_queue SET claimed_at = claimed_at - interval '61 seconds'"
                       " WHERE request_id IN ('R0', 'R200')")
    await conn.execute("UPDATE notification_queue SET claimed_at = NULL WHERE request_id = 'R1'")
    # Without a lease (the claims between the dispatcher's looks for expired leases) only what is due.
    tx = conn.transaction()
    await tx.start()
    assert [r["request_id"] for r in await claim_due(conn, now, 500, None)] == ["R1"]
    await tx.rollback()
    again = await claim_due(conn, now, 500, 60)
    assert [(r["request_id"], r["resent"]) for r in again] == [("R0", True), ("R200", True), ("R1", False)]


async def test_the_queue_holds_only_what_is_still_to_be_sent(notifier_schema):
    """The dispatcher claims from notification_queue: a notification written pending is in it, one that ends
    leaves it. A withdrawal cancels what is pending but not a mail being sent, whose confirmation ends it once."""
    from datetime import datetime, timedelta, timezone

    from services.notifier.dispatch import _CONFIRM, claim_due
    from services.notifier.store import _CANCEL_PENDING

    conn = notifier_schema
    now = datetime(2027, 3, 1, 1, 0, tzinfo=timezone.utc)
    await conn.executemany("INSERT INTO recipients VALUES ($1, 'C-1', '山田', 'a@example.jp')", [("R1",), ("R2",)])
    await conn.executemany(
        "INSERT INTO notifications (request_id, kind, due_at, days_before, status) VALUES ($1, $2, $3, $4, $5)",
        [("R1", "acknowledgement", now - timedelta(seconds=1), None, "pending"),
         ("R1", "data_export_reminder", now - timedelta(hours=1), 14, "pending"),
         ("R2", "data_export_reminder", now - timedelta(hours=1), 14, "pending"),
         ("R2", "rich_menu_reminder", now - timedelta(hours=1), 14, "cancelled")])

    async def queue() -> list[tuple]:
        return [tuple(r) for r in await conn.fetch(
            "SELECT n.request_id, n.kind, q.claimed_at IS NOT NULL FROM notification_queue q"
            " JOIN notifications n USING (id) ORDER BY 1, 2")]

    assert await queue() == [("R1", "acknowledgement", False), ("R1", "data_export_reminder", False),
                             ("R2", "data_export_reminder", False)]
    [ack] = await claim_due(conn, now, 1, 60)
    assert (ack["request_id"], ack["kind"]) == ("R1", "acknowledgement")
    await conn.execute(_CANCEL_PENDING, "R1", ["acknowledgement", "data_export_reminder"])  # R1 withdrawn
    assert await queue() == [("R1", "acknowledgement", True), ("R2", "data_export_reminder", False)]
    assert await conn.fetch(_CONFIRM, [ack["id"]], now, ["<m1@cancelflow>"]) != []
    assert await conn.fetch(_CONFIRM, [ack["id"]], now, ["<m1@cancelflow>"]) == [], "confirmed once"
    assert await queue() == [("R2", "data_export_reminder", False)]
    statuses = {(r[0], r[1]): r[2] for r in await conn.fetch("SELECT request_id, kind, status FROM notifications")}
    assert statuses == {("R1", "acknowledgement"): "sent", ("R1", "data_export_reminder"): "cancelled",
                        ("R2", "data_export_reminder"): "pending", ("R2", "rich_menu_reminder"): "cancelled"}


async def test_a_claim_commits_without_waiting_for_the_disk_and_a_confirmation_waits(notifier_schema):
    """The claim's commit writes no WAL to the disk itself (it is sent again under its Message-ID if a crash of
    PostgreSQL loses it); the confirmation, which emits notification.sent, flushes. Counted by this backend's
    WAL fsyncs (PostgreSQL 18's per-backend I/O statistics)."""
    from datetime import datetime, timedelta, timezone

    from services.notifier.dispatch import _CONFIRM, claim_due

    conn = notifier_schema
    now = datetime(2027, 3, 1, 1, 0, tzinfo=timezone.utc)
    await conn.executemany("INSERT INTO recipients VALUES ($1, 'C-1', '山田', 'a@example.jp')",
                           [(f"R{i}",) for i in range(5)])
    await conn.executemany("INSERT INTO notifications (request_id, kind, due_at) VALUES ($1, 'acknowledgement', $2)",
                           [(f"R{i}", now - timedelta(seconds=5 - i)) for i in range(5)])

    async def fsyncs() -> int:
        return await wal_fsyncs(conn)

    before = await fsyncs()
    claimed = [row for _ in range(5) for row in await claim_due(conn, now, 1, 60)]
    assert [r["request_id"] for r in claimed] == [f"R{i}" for i in range(5)]
    after_claims = await fsyncs()
    assert after_claims == before, "five claims committed, none waited for the disk"
    assert await conn.fetchval("SHOW synchronous_commit") == "on", "for the claim's transaction alone"
    for row in claimed:
        assert await conn.fetch(_CONFIRM, [row["id"]], now, [f"<{row['request_id']}@cancelflow>"]) != []
    assert await fsyncs() - after_claims >= 5, "each confirmation waited for the disk"


async def test_the_queue_follows_statements_of_many_rows(notifier_schema):
    """The queue's triggers fire once a statement: a statement writing several rows queues exactly its pending
    ones, an update that moves no status leaves the queue alone, and the rebuild's upsert of a sent row
    (INSERT ... ON CONFLICT DO UPDATE) takes a pending one out."""
    from datetime import datetime, timedelta, timezone

    from services.notifier.rebuild import _SENT

    conn = notifier_schema
    now = datetime(2027, 3, 1, 1, 0, tzinfo=timezone.utc)
    await conn.execute(
        "INSERT INTO notifications (request_id, kind, due_at, days_before, status)"
        " SELECT 'R' || i, 'data_export_reminder', $1::timestamptz + i * interval '1 hour', 14,"
        " CASE WHEN i % 3 = 0 THEN 'cancelled' ELSE 'pending' END FROM generate_series(1, 9) AS i", now)

    async def queued() -> list[str]:
        return [r[0] for r in await conn.fetch("SELECT request_id FROM notification_queue ORDER BY due_at")]

    assert await queued() == ["R1", "R2", "R4", "R5", "R7", "R8"]
    await conn.execute("UPDATE notifications SET days_before = 3 WHERE request_id IN ('R1', 'R2', 'R3')")
    assert await queued() == ["R1", "R2", "R4", "R5", "R7", "R8"], "no status moved"
    await conn.execute("UPDATE notifications SET status = 'cancelled' WHERE request_id IN ('R2', 'R3', 'R4')")
    assert await queued() == ["R1", "R5", "R7", "R8"]
    await conn.execute(_SENT, "R5", "data_export_reminder", now + timedelta(hours=5), now, "<m5@cancelflow>")
    await conn.execute(_SENT, "R10", "acknowledgement", now, now, "<m10@cancelflow>")
    assert await queued() == ["R1", "R7", "R8"]
    assert await conn.fetchval("SELECT count(*) FROM notifications WHERE status = 'sent'") == 2


async def test_a_notifier_killed_before_the_end_of_data_sends_the_mail_after_restart(infra, client, db):
    """The one window SMTP leaves open: the claim committed, the DATA not ended. A notifier killed -9 there
    loses nothing: the rows stay claimed, and after its lease the restarted notifier sends them again
    under the same Message-ID; every mail arrives once, every notification.sent is emitted once."""
    from datetime import date
    from pathlib import Path

    from cancelflow.client import read_topic
    from shared import topics

    stack = infra.stack
    if stack is None:
        pytest.skip("an external stack: its notifier cannot be killed from here")
    saved_env = dict(stack.config.extra_env)
    hold = Path(saved_env["NOTIFIER_TEST_HOLD_FILE"])  # the session's notifier holds mails while it exists
    held = hold.with_name(hold.name + ".held")
    held.unlink(missing_ok=True)

    def restart(extra: dict[str, str]) -> None:
        if "notifier" in stack.alive():
            stack.stop_process("notifier", stack.pid_of("notifier"))
        stack.config.extra_env = saved_env | extra
        stack.start_service("notifier")
        stack.wait_healthy(["notifier"])

    restarted = False
    try:
        hold.write_text("")
        contract = await client.sign_contract(start_date=date(2024, 1, 31))
        request_id = (await client.submit(client.form(contract))).json()["request_id"]
        for _ in range(300):  # the dispatcher claims the request's first mails and holds them
            if held.exists() and request_id in held.read_text():
                break
            await asyncio.sleep(0.1)
        held_ids = [i for i in held.read_text().split() if request_id in i]
        assert held_ids, "the dispatcher held the request's mails before the end of DATA"
        claimed = await db.fetchval("SELECT count(*) FROM notifier.notification_queue WHERE request_id = $1"
                                    " AND claimed_at IS NOT NULL", request_id)
        assert claimed > 0, "the claim is committed before the DATA ends"
        assert client.mails(request_id) == [], "no DATA ended yet"

        stack.kill("notifier")  # kill -9 inside the window
        hold.unlink()
        restarted = True
        restart({"NOTIFIER_SENDING_LEASE_S": "2"})  # the session's notifier again, with a short lease
        mails = await client.wait_mails(request_id, 3, timeout=60)
        await asyncio.sleep(1.0)  # a second copy, if any, would land now
        mails = client.mails(request_id)
        ids = [m.message_id for m in mails]
        assert len(ids) == len(set(ids)) == 3, f"each mail once, by Message-ID: {ids}"
        assert set(held_ids) <= set(ids), "the held mails were sent after the restart, same Message-ID"
        rows = await db.fetch("SELECT status, message_id FROM notifier.notifications WHERE request_id = $1"
                              " AND status <> 'pending'", request_id)  # the 14- and 3-day reminders wait
        assert sorted((r["status"], r["message_id"]) for r in rows) == sorted(("sent", i) for i in ids)
        for _ in range(40):  # the relay publishes them just after the confirmation's commit
            events = await read_topic(infra.bootstrap, topics.NOTIFICATIONS, lambda r: r.key == contract.encode())
            if len(events) >= 3:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        events = await read_topic(infra.bootstrap, topics.NOTIFICATIONS, lambda r: r.key == contract.encode())
        sent = sorted((e["data"]["kind"], e["data"]["due_at"]) for e in (orjson.loads(r.value) for r in events))
        assert len(sent) == len(set(sent)) == 3, f"one notification.sent per mail, on confirmation: {sent}"
    finally:
        hold.unlink(missing_ok=True)
        if restarted:
            restart({})
        stack.config.extra_env = saved_env
