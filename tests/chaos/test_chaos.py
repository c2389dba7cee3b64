"""Chaos on the cluster: 3 Kafka nodes (replication 3, min.insync.replicas 2), 2 instances of every service,
N cancellations flowing while, in turn: kill -9 of the broker leading the most partitions, a rolling clean
restart of every broker, kill -9 of one instance of each service, every service scaled 2 -> 3 -> 1 -> 2, a
PostgreSQL restart. Then, against independent reads of the topics, the database and the SMTP sink: every
request exactly one decision, one settlement when accepted (none when rejected), one of each due e-mail;
input set = output set; per contract, the events on each topic in the order they were caused; outboxes empty;
consumer lag zero.

CI runs N=200 (CHAOS_N); the full run is `CHAOS_N=100000 ./scripts/test tests/chaos -s` (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from datetime import date, datetime, timezone

import asyncpg
import orjson
import pytest

from cancelflow import kafka_clients, rebuild
from cancelflow.client import PipelineClient, read_topic, unique
from cancelflow.infra.mailsink import read_mail_headers
from cancelflow.stack import SERVICES, Stack
from shared import topics
from shared.events import CancellationSubmitted, ContractSigned, new_envelope

from . import faults
from .conftest import API_KEY

N = int(os.environ.get("CHAOS_N", "200"))
DUPLICATE_EVERY = 10  # every 10th submission is for a contract already being cancelled: rejected ALREADY_PENDING
GROUP_TOPICS = {
    "intake": (topics.SUBMISSIONS, topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS),
    "eligibility": (topics.CONTRACTS, topics.REQUESTS),
    "billing": (topics.CONTRACTS, topics.DECISIONS),
    "notifier": (topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS),
}
# The full run outlasts the suite's 600 s per test: its budget grows with N (about 30 ms a request here).
pytestmark = [pytest.mark.integration, pytest.mark.timeout(max(600, int(600 + N * 0.08)))]


KILL_INSTANCES = "kill -9 one instance of each service"  # a notifier among them: resends allowed


def fault_plan(stack: Stack) -> list[tuple[str, callable]]:
    plan = [("kill -9 the broker leading the most partitions",
             lambda: faults.kill_broker(stack, faults.broker_leading_most(stack)))]
    plan += [(f"clean restart of {b}", lambda b=b: faults.restart_broker(stack, b)) for b in stack.kafka_nodes]
    plan += [(KILL_INSTANCES, lambda: faults.kill_instances(stack, [f"{s}-2" for s in SERVICES]))]
    plan += [(f"scale every service to {n}", lambda n=n: faults.scale_all(stack, n)) for n in (3, 1, 2)]
    plan += [("restart postgres", lambda: faults.restart_postgres(stack))]
    return plan


async def _fetch(url: str, sql: str, *args):
    for _ in range(100):
        try:
            conn = await asyncpg.connect(url)
            try:
                return await conn.fetch(sql, *args)
            finally:
                await conn.close()
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.5)
    raise TimeoutError(sql)


async def _lag(stack: Stack) -> dict[str, int]:
    admin = kafka_clients.admin(stack.kafka_connection)
    probe = kafka_clients.consumer(stack.kafka_connection)
    await admin.start()
    await probe.start()
    try:
        lag = {}
        for group, group_topics in GROUP_TOPICS.items():
            committed = await admin.list_consumer_group_offsets(group)
            tps = [tp for tp in committed if tp.topic in group_topics]
            ends = await probe.end_offsets(tps)
            lag[group] = sum(ends[tp] - committed[tp].offset for tp in tps)
        return lag
    finally:
        await probe.stop()
        await admin.close()


async def _rebuilt_differences(stack: Stack) -> dict[str, dict]:
    """Each service's state built from the topics into a scratch schema, compared with its own tables."""
    async def one(service: str) -> dict:
        schema = f"{service}_chaos_rebuild"
        await rebuild.build(service, database_url=stack.database_url, kafka=kafka_clients.connection(stack.bootstrap),
                            schema=schema, now=datetime.now(timezone.utc))
        try:
            return await rebuild.compare(stack.database_url, service, service, schema)
        finally:
            await rebuild.drop(stack.database_url, schema)

    # The four at once: each waits on Kafka and PostgreSQL most of the time.
    return dict(zip(SERVICES, await asyncio.gather(*(one(s) for s in SERVICES))))


async def test_nothing_lost_nothing_twice_on_a_cluster_under_faults(cluster_stack):
    stack = cluster_stack
    url = stack.database_url
    started = time.monotonic()
    async with PipelineClient(stack.bootstrap, f"http://127.0.0.1:{stack.port_of('intake')}", stack.mail_dir,
                              api_key=API_KEY) as c:
        # The submissions: contract i once, and every 10th a second time, later (same key, same partition).
        plan: list[tuple[str, str]] = []  # (submission id, contract id)
        for i in range(N):
            cid = plan[i - DUPLICATE_EVERY // 2][1] if i % DUPLICATE_EVERY == DUPLICATE_EVERY - 1 else unique("CH")
            plan.append((unique("S"), cid))
        contracts = list(dict.fromkeys(cid for _, cid in plan))
        sends = [await c.producer.send(topics.CONTRACTS, new_envelope(
            ContractSigned(contract_id=cid, account_id="@" + cid.lower(), plan="pro", monthly_fee_jpy=10_000,
                           start_date=date(2024, 1, 31)), producer="upstream", correlation_id=cid,
            causation_id=None).to_bytes(), key=cid.encode()) for cid in contracts]
        await asyncio.gather(*sends)
        for schema in ("eligibility", "billing"):
            deadline = time.monotonic() + 120 + len(contracts) * 0.01
            while (await _fetch(url, f"SELECT count(*) AS n FROM {schema}.contracts"))[0]["n"] < len(contracts):
                assert time.monotonic() < deadline, f"{schema} did not record the contracts"
                await asyncio.sleep(0.5)

        submitted = 0

        async def submit(count: int) -> None:
            nonlocal submitted
            futures = []
            for sid, cid in plan[submitted:submitted + count]:
                form = c.form(cid, who=f"chaos{submitted}", reason="SWITCHING_TOOL")
                env = new_envelope(CancellationSubmitted(**form, submission_id=sid), producer="callcentre",
                                   correlation_id=sid, causation_id=None)
                futures.append(await c.producer.send(topics.SUBMISSIONS, env.to_bytes(), key=cid.encode()))
                submitted += 1
            await asyncio.gather(*futures)

        # Each fault runs in a thread while its share of the traffic is submitted, a slice every 0.3 s.
        steps = fault_plan(stack)
        share = N // len(steps)
        applied = []
        for k, (what, action) in enumerate(steps):
            quota = share if k < len(steps) - 1 else N - submitted
            until = submitted + quota
            began = time.monotonic() - started
            task = asyncio.create_task(asyncio.to_thread(action))
            while not task.done() and submitted < until:
                await submit(min(max(quota // 8, 1), until - submitted))
                await asyncio.wait([task], timeout=0.3)
            await task
            await submit(until - submitted)
            applied.append(f"{what} at {began:.1f}s (took {time.monotonic() - started - began:.1f}s)")
            print(f"chaos: {applied[-1]}", flush=True)
        assert submitted == N
        stack.wait_healthy(stack.service_names, timeout=180)

        # Complete: accepted with its settlement and 3 e-mails out, rejected with its 1.
        sids = [sid for sid, _ in plan]
        done_sql = ("SELECT count(*) AS n FROM intake.requests WHERE submission_id = ANY($1::text[]) AND"
                    " (status = 'accepted' AND settlement IS NOT NULL AND jsonb_array_length(notifications) >= 3"
                    "  OR status = 'rejected' AND jsonb_array_length(notifications) >= 1)")
        deadline = time.monotonic() + 180 + N * 0.05
        shown = time.monotonic()
        while (done := (await _fetch(url, done_sql, sids))[0]["n"]) < N and time.monotonic() < deadline:
            if time.monotonic() - shown >= 30:  # a long run says how far it got
                print(f"chaos: {done} of {N} flows complete at {time.monotonic() - started:.0f}s", flush=True)
                shown = time.monotonic()
            await asyncio.sleep(1.0)
        flowed = time.monotonic() - started
    await asyncio.sleep(3.0)  # late duplicates, if any, would land now
    await verify(stack, plan, done=done, seconds=flowed, faults=applied)


def order_problems(topic: str, records: list[tuple[int, int, str, dict]], order: dict[str, int], *,
                   check_order: bool = True) -> list[str]:
    """Per key (contract) on one topic: its records on more than one partition, or its requests first seen
    in another order than `order` (request id -> submission index). A republished copy of a record seen
    before does not count: its first appearance is what a consumer acted on. Each problem names the
    records: partition, offset, event type, event id, request and submission index."""
    partitions, first = defaultdict(set), defaultdict(dict)
    for p, o, key, e in records:  # sorted by (partition, offset)
        partitions[key].add(p)
        first[key].setdefault(e["data"]["request_id"], (p, o, e["event_type"], e["event_id"]))
    problems = [f"{topic}: contract {key} on partitions {sorted(ps)}" for key, ps in partitions.items() if len(ps) > 1]
    if not check_order:  # e-mails of two requests of a contract may go out in either order
        return problems
    for key, seen in first.items():
        ranks = [order[rid] for rid in seen]
        if ranks != sorted(ranks):
            problems.append(f"{topic}: contract {key}: " + "; then ".join(
                f"p{p} offset {o} {etype} {eid} request {rid} (submission #{order[rid]})"
                for rid, (p, o, etype, eid) in seen.items()))
    return problems


async def verify(stack: Stack, plan: list[tuple[str, str]], *, done: int, seconds: float, faults: list[str]) -> dict:
    """The run's figures from independent reads of the database, the topics and the SMTP sink's files, each
    asserted exact. `plan`: (submission id, contract id) in the order submitted."""
    url = stack.database_url
    sids = [sid for sid, _ in plan]
    n = len(plan)
    took, mark = {}, time.monotonic()  # each read's seconds, in the figures: the full run's checks are long

    def lap(what: str) -> None:
        nonlocal mark
        took[what], mark = round(time.monotonic() - mark, 1), time.monotonic()

    requests = await _fetch(url, "SELECT request_id, submission_id, contract_id, status FROM intake.requests"
                                 " WHERE submission_id = ANY($1::text[])", sids)
    request_ids = {r["request_id"] for r in requests}
    decision_rows = await _fetch(url, "SELECT request_id FROM eligibility.cancellations"
                                      " WHERE request_id = ANY($1::text[])", list(request_ids))
    settlement_rows = await _fetch(url, "SELECT request_id FROM billing.settlements WHERE status = 'issued'"
                                        " AND request_id = ANY($1::text[])", list(request_ids))
    sent_rows = await _fetch(url, "SELECT request_id, kind, due_at FROM notifier.notifications"
                                  " WHERE status = 'sent' AND request_id = ANY($1::text[])", list(request_ids))
    outbox = {s: (await _fetch(url, f"SELECT count(*) AS n FROM {s}.outbox"))[0]["n"] for s in SERVICES}
    lap("database")

    on_topic = {}
    for topic in (topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS):
        on_topic[topic] = [(r.partition, r.offset, r.key.decode(), orjson.loads(r.value))
                           for r in await read_topic(stack.bootstrap, topic, timeout=120 + n * 0.01)]
        on_topic[topic] = [(p, o, k, e) for p, o, k, e in sorted(on_topic[topic], key=lambda x: x[:2])
                           if e["data"].get("request_id") in request_ids]
    lap("topics")
    mails = [h for h in read_mail_headers(stack.mail_dir) if h.get("X-Cancelflow-Request-Id") in request_ids]
    lap("mails")
    lag = await _lag(stack)
    for _ in range(60):  # offsets are committed every 100 ms: the last ones may be on their way
        if set(lag.values()) == {0}:
            break
        await asyncio.sleep(1.0)
        lag = await _lag(stack)
    lap("lag")

    status = {r["request_id"]: r["status"] for r in requests}
    accepted = {rid for rid, s in status.items() if s == "accepted"}
    rejected = {rid for rid, s in status.items() if s == "rejected"}

    def distinct(topic, *types):
        """Per request: the distinct event ids of these types on the topic (a republished record counts once)."""
        out = defaultdict(set)
        for _, _, _, e in on_topic[topic]:
            if not types or e["event_type"] in types:
                out[e["data"]["request_id"]].add(e["event_id"])
        return out

    decisions = distinct(topics.DECISIONS, "cancellation.accepted", "cancellation.rejected")
    settlements = distinct(topics.SETTLEMENTS, "settlement.issued")
    notifications = Counter((e["data"]["request_id"], e["data"]["kind"], e["data"]["due_at"])
                            for e in {e["event_id"]: e for *_, e in on_topic[topics.NOTIFICATIONS]}.values())
    # E-mail is at least once (services/notifier/dispatch.py): the effect is one Message-ID per (request,
    # kind, due); a copy under the same Message-ID (a resend after a notifier died) is counted apart.
    by_id = {h["Message-ID"]: h for h in mails}
    per_mail = Counter((h["X-Cancelflow-Request-Id"], h["X-Cancelflow-Kind"], h["X-Cancelflow-Due-At"])
                       for h in by_id.values())
    mails_of = Counter(h["X-Cancelflow-Request-Id"] for h in by_id.values())
    resent = len(mails) - len(by_id)
    notifier_killed = any(f.startswith(KILL_INSTANCES) for f in faults)

    # Per contract, on each topic: one partition, and the requests in the order they were submitted.
    submitted_as = {sid: i for i, (sid, _) in enumerate(plan)}
    order = {r["request_id"]: submitted_as[r["submission_id"]] for r in requests}
    out_of_order = [problem for topic, records in on_topic.items()
                    for problem in order_problems(topic, records, order, check_order=topic != topics.NOTIFICATIONS)]

    figures = {
        "N": n, "seconds": round(seconds, 1), "faults": faults, "requests": len(requests),
        "accepted": len(accepted), "rejected": len(rejected), "completed_flows": done,
        "decision_rows": len(decision_rows), "decision_events_distinct": sum(len(v) for v in decisions.values()),
        "decision_records_on_topic": sum(1 for *_, e in on_topic[topics.DECISIONS]
                                         if e["event_type"] in ("cancellation.accepted", "cancellation.rejected")),
        "settlements_issued_rows": len(settlement_rows),
        "settlement_events_distinct": sum(len(v) for v in settlements.values()),
        "notifications_sent_rows": len(sent_rows), "notification_events_distinct": len(notifications),
        "emails": len(mails), "emails_distinct_message_ids": len(by_id), "emails_resent_same_message_id": resent,
        "emails_distinct_request_kind_due": len(per_mail), "out_of_order": len(out_of_order),
        "out_of_order_first": out_of_order[:10],
        "outbox_left": outbox, "lag": lag, "check_seconds": took,
    }
    print("\nchaos figures:", figures, flush=True)  # before the asserts: a failed run's figures are its diagnosis
    # The longest check (every service projected again from the topics) last, the figures already out.
    rebuilt = await _rebuilt_differences(stack)
    lap("rebuild")
    figures["rebuilt_differences"] = rebuilt
    print(f"chaos rebuild: {rebuilt} in {took['rebuild']}s", flush=True)
    expected_rejected = n // DUPLICATE_EVERY
    assert len(requests) == n and {r["submission_id"] for r in requests} == set(sids), "input set = output set"
    assert len(accepted) == n - expected_rejected and len(rejected) == expected_rejected
    assert done == n
    # Every request exactly one decision, in the table and on the topic.
    assert sorted(r["request_id"] for r in decision_rows) == sorted(request_ids)
    assert set(decisions) == request_ids and {len(v) for v in decisions.values()} == {1}
    # One settlement per accepted request, none for a rejected one.
    assert sorted(r["request_id"] for r in settlement_rows) == sorted(accepted)
    assert set(settlements) == accepted and {len(v) for v in settlements.values()} == {1}
    # One of each due e-mail: acknowledgement and the two reminders when accepted, the rejection otherwise.
    assert set(per_mail.values()) == {1}, "one Message-ID per (request, kind, due)"
    assert resent == 0 or notifier_killed, "a mail sent again although no notifier died"
    assert all(mails_of[r] == 3 for r in accepted) and all(mails_of[r] == 1 for r in rejected)
    assert set(notifications.values()) == {1} and len(notifications) == len(by_id) == len(sent_rows)
    assert set(distinct(topics.REQUESTS)) == request_ids
    assert out_of_order == [], "out of order:\n" + "\n".join(out_of_order)
    assert outbox == {s: 0 for s in SERVICES}
    assert lag == {g: 0 for g in GROUP_TOPICS}
    # Every service built again from the log (its relays' republished copies in it) equals the original.
    assert rebuilt == {s: {} for s in SERVICES}
    return figures


def test_order_problems_name_the_records_and_let_a_republished_copy_pass():
    def rec(offset, rid, key="C1", partition=3):
        return (partition, offset, key, {"event_type": "cancellation.requested", "event_id": f"e-{rid}",
                                         "data": {"request_id": rid}})

    order = {"R1": 0, "R2": 1}
    republished = [rec(10, "R1"), rec(11, "R2"), rec(12, "R1")]  # a relay's second copy of R1: not a problem
    assert order_problems("t", republished, order) == []
    assert order_problems("t", [rec(10, "R2"), rec(11, "R1")], order) == [
        "t: contract C1: p3 offset 10 cancellation.requested e-R2 request R2 (submission #1); then "
        "p3 offset 11 cancellation.requested e-R1 request R1 (submission #0)"]
    assert order_problems("t", [rec(10, "R2"), rec(11, "R1")], order, check_order=False) == []
    assert order_problems("t", [rec(10, "R1", partition=1), rec(11, "R2")], order) == [
        "t: contract C1 on partitions [1, 3]"]
