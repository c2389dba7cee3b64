"""Scheduled work with two instances of each service on the cluster: the reminders at 10:00 Tokyo (notifier's
dispatch) and the completions on the effective date (eligibility) happen once whichever instance runs them,
and go on when that instance is killed -9 just as they fall due (the clock moved through the stack's clock
file, as the demo does)."""

from __future__ import annotations

import asyncio
import re
import time as clock_time
from collections import Counter
from datetime import date, datetime, time, timedelta

import asyncpg
import httpx
import orjson
import pytest

from cancelflow.client import PipelineClient, read_topic
from shared import topics
from shared.contract_calendar import TOKYO

from .conftest import API_KEY

pytestmark = pytest.mark.integration

K = 12  # cancellations, half through each intake instance
OLD_START = date(2024, 1, 31)


def sent_by(stack, name: str) -> float:
    """E-mails this notifier instance sent since it started (its own /metrics)."""
    text = httpx.get(f"http://127.0.0.1:{stack.port_of(name)}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r'^cancelflow_notifications_sent_total\{[^}]*\} (\S+)$', text, re.M))


async def stack_db(stack, sql: str, *args):
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def wait_until(check, timeout: float, what: str):
    deadline = clock_time.monotonic() + timeout
    while clock_time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.3)
    raise AssertionError(f"not within {timeout:.0f}s: {what}")


async def test_reminders_and_completions_happen_once_whichever_instance_runs_them(cluster_stack, cluster_clock):
    stack = cluster_stack
    intakes = [f"http://127.0.0.1:{stack.port_of('intake')}", f"http://127.0.0.1:{stack.port_of('intake-2')}"]
    async with PipelineClient(stack.bootstrap, intakes[0], stack.mail_dir, api_key=API_KEY) as first, \
            PipelineClient(stack.bootstrap, intakes[1], stack.mail_dir, api_key=API_KEY) as second:
        clients = [first, second]
        contracts = [await first.sign_contract(start_date=OLD_START) for _ in range(K)]
        rids = []
        for i, contract in enumerate(contracts):
            r = await clients[i % 2].submit(clients[i % 2].form(contract, reason="SWITCHING_TOOL"))
            assert r.status_code == 202, r.text
            rids.append(r.json()["request_id"])
        states = [await first.wait_status(rid, lambda s: s["status"] == "accepted" and len(s["notifications"]) >= 3,
                                          timeout=120) for rid in rids]
        effective = {date.fromisoformat(s["effective_date"]) for s in states}
        assert len(effective) == 1, "the same notice period for every contract"
        effective = effective.pop()

        def due_mails(days_before: int) -> Counter:
            due = datetime.combine(effective - timedelta(days=days_before), time(10), TOKYO)
            # By Message-ID: a copy under the same one (a resend after a notifier died) is the same e-mail.
            return Counter((m.headers["X-Cancelflow-Request-Id"], m.headers["X-Cancelflow-Kind"])
                           for m in {m.message_id: m for m in first.mails()}.values()
                           if m.headers.get("X-Cancelflow-Request-Id") in rids
                           and datetime.fromisoformat(m.headers["X-Cancelflow-Due-At"]) == due)

        # 14 days before, 10:00 Tokyo: both notifier instances run the dispatch; each reminder goes once.
        # (Other tests' requests on this stack fall due too: every e-mail in the sink counts.)
        before = {n: sent_by(stack, n) for n in ("notifier", "notifier-2")}
        mails_before = len(first.mails())
        cluster_clock.set(datetime.combine(effective - timedelta(days=14), time(10, 0, 1), TOKYO))

        async def fourteen_days_sent():
            return sum(due_mails(14).values()) >= 2 * K and await nothing_pending()

        async def nothing_pending():
            return (await stack_db(stack, "SELECT count(*) FROM notifier.notifications WHERE status = 'pending'"
                                          " AND due_at <= $1", cluster_clock.now())) == 0
        await wait_until(fourteen_days_sent, 180, "the reminders 14 days before")
        await asyncio.sleep(1.0)
        assert set(due_mails(14).values()) == {1} and len(due_mails(14)) == 2 * K
        ran = {n: sent_by(stack, n) - before[n] for n in before}
        assert sum(ran.values()) == len(first.mails()) - mails_before, f"each e-mail sent by one instance: {ran}"

        # 3 days before: kill -9 the instance that sent the most, as the reminders fall due; the other one
        # sends them all, each once by Message-ID (what the dead one had claimed and not confirmed, it sends
        # again when the lease runs out, under the same Message-ID).
        busiest = max(ran, key=ran.get)
        survivor = next(n for n in ran if n != busiest)
        cluster_clock.set(datetime.combine(effective - timedelta(days=3), time(10, 0, 1), TOKYO))
        stack.kill(busiest)

        async def three_days_sent():
            return sum(due_mails(3).values()) >= 2 * K
        await wait_until(three_days_sent, 120, f"the reminders 3 days before, by {survivor} alone")
        await asyncio.sleep(1.0)
        assert set(due_mails(3).values()) == {1} and len(due_mails(3)) == 2 * K

        # The effective date: kill -9 one eligibility instance as the completions fall due; each request is
        # completed once (one cancellation.completed event id), by the other.
        cluster_clock.set(datetime.combine(effective - timedelta(days=1), time(23, 59), TOKYO))
        await asyncio.sleep(1.0)
        assert {(await first.status(rid))["status"] for rid in rids} == {"accepted"}
        cluster_clock.set(datetime.combine(effective, time(0, 0, 1), TOKYO))
        stack.kill("eligibility")

        async def all_completed():
            return {(await first.status(rid))["status"] for rid in rids} == {"completed"}
        await wait_until(all_completed, 120, "every request completed by eligibility-2")

        records = await read_topic(stack.bootstrap, topics.DECISIONS, timeout=60)
        completed = {}
        for r in records:
            e = orjson.loads(r.value)
            if e["event_type"] == "cancellation.completed" and e["data"]["request_id"] in rids:
                completed.setdefault(e["data"]["request_id"], set()).add(e["event_id"])
        assert sorted(completed) == sorted(rids)
        assert {len(ids) for ids in completed.values()} == {1}, "each completion decided once"
        # Nothing more is sent for them (the reminders were all due before; none is left pending).
        await asyncio.sleep(1.0)
        assert len({m.message_id for m in first.mails() if m.headers.get("X-Cancelflow-Request-Id") in rids}) == 7 * K

    # Back to two instances of each, for whatever runs next on this stack.
    cluster_clock.path.unlink(missing_ok=True)
    for name in (busiest, "eligibility"):
        stack.start_service(name)
    stack.wait_healthy([busiest, "eligibility"], timeout=180)
