"""The operator commands against the real stack: trace, tail, dlq list / replay, top and report, each also
run as the `cancelflow` command an operator types."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from datetime import date, datetime, timezone

import pytest

from cancelflow.client import read_topic
from cancelflow.ops.dlq import list_dead_letters, replay_dead_letters
from cancelflow.ops.records import read_records
from cancelflow.ops.tail import follow
from cancelflow.ops.top import top_once
from cancelflow.ops.tracing import collect_trace
from shared import topics
from shared.events import CancellationSubmitted, new_envelope

pytestmark = pytest.mark.integration

OLD_START = date(2024, 1, 31)


async def cancelflow(infra, *args: str) -> str:
    """Run `cancelflow ARGS` in its own process against the test stack; its stdout."""
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap, "COLUMNS": "250", "NO_COLOR": "1",
                        "PYTHONFAULTHANDLER": "1"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "cancelflow.cli", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.send_signal(6)  # SIGABRT: the fault handler prints where it is stuck
        _, err = await proc.communicate()  # (what it printed went with the cancelled read)
        raise AssertionError(f"cancelflow {' '.join(args)} did not finish in 60 s: {err.decode()[-3000:]}") from None
    assert proc.returncode == 0, f"cancelflow {' '.join(args)} exited {proc.returncode}: {err.decode()[-2000:]}"
    return out.decode()


async def test_trace_and_tail_follow_one_request_with_personal_data_masked(client, infra):
    contract = await client.sign_contract(start_date=OLD_START)
    who = f"ops{uuid.uuid4().hex[:6]}"
    r = await client.submit(client.form(contract, reason="SWITCHING_TOOL", who=who))
    rid = r.json()["request_id"]
    await client.wait_status(rid, lambda s: s["status"] == "accepted" and s["settlement"] is not None
                             and len(s["notifications"]) >= 3)

    rows = await collect_trace(infra.bootstrap, rid)
    kinds = [(r.topic, r.event_type) for r in rows]
    assert kinds[:2] == [(topics.REQUESTS, "cancellation.requested"), (topics.DECISIONS, "cancellation.accepted")]
    assert (topics.SETTLEMENTS, "settlement.issued") in kinds
    assert kinds.count((topics.NOTIFICATIONS, "notification.sent")) == 3
    assert rows[0].delta_ms == 0 and [r.delta_ms for r in rows] == sorted(r.delta_ms for r in rows)
    assert [r.producer for r in rows[:2]] == ["intake", "eligibility"]
    assert rows[1].detail == "effective=" + client_effective(rows) + " offers=consultation,discount"

    # As an operator runs it: the same rows, as JSON lines.
    out = await cancelflow(infra, "trace", rid, "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["topic"], x["partition"], x["offset"], x["event_type"]) for x in lines] == [
        (r.topic, r.partition, r.offset, r.event_type) for r in rows]

    # tail: the request's line is there with its customer sealed; the e-mail and phone are in no line.
    seen: list[str] = []
    await follow(infra.bootstrap, topics.REQUESTS, from_beginning=True, limit=None, emit=seen.append,
                 idle_timeout=1.0)
    mine = [line for line in seen if rid in line and "cancellation.requested" in line]
    assert len(mine) == 1 and '"customer_sealed":{' in mine[0] and "@example.jp" not in mine[0]
    assert not any(f"taro.{who}@example.jp" in line for line in seen)
    assert not any("090-1234-" in line for line in seen)
    out = await cancelflow(infra, "tail", topics.REQUESTS, "--from-beginning", "--limit", "1")
    assert len(out.splitlines()) == 1 and out.startswith(topics.REQUESTS + "[") and "cancellation." in out
    assert "@example.jp" not in out.replace("***@example.jp", "")


def client_effective(rows) -> str:
    return next(r.detail for r in rows if r.event_type == "cancellation.accepted").split()[0].split("=")[1]


async def test_a_poison_submission_is_listed_with_its_reason_and_source(client, infra):
    key = f"C-OPS-{uuid.uuid4().hex[:10]}"
    partition, offset = await client.publish_raw(topics.SUBMISSIONS, b"{not json " + key.encode(), key=key)
    await client.wait_consumed(("intake",), topics.SUBMISSIONS, partition, offset)
    deadline = time.monotonic() + 20
    while True:  # the dead letter goes out through intake's outbox, a moment after the commit
        mine = [d for d in await list_dead_letters(infra.bootstrap, topics.SUBMISSIONS) if d.key == key]
        if mine or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert len(mine) == 1
    d = mine[0]
    assert (d.consumer, d.source, d.replayed) == ("intake", f"{topics.SUBMISSIONS}:{partition}:{offset}", False)
    assert d.reason.startswith("value: not JSON") and d.topic == topics.dlq(topics.SUBMISSIONS)

    out = await cancelflow(infra, "dlq", "list", topics.SUBMISSIONS, "--json")
    listed = [json.loads(line) for line in out.splitlines()]
    assert [x for x in listed if x["key"] == key] == [
        {**d.__dict__, "where": d.where, "source": d.source}]


async def test_replay_republishes_a_dead_letter_once_and_the_fixed_message_is_handled(client, infra, db):
    """A valid submission that a (since fixed) consumer dead-lettered: replayed, it is handled like any other;
    replayed again, nothing happens. The dead letter names a consumer of its own, so that the replay touches
    no other test's dead letters (the marker is per consumer: `cancelflow-dlq-replay.<consumer>`)."""
    contract = await client.sign_contract(start_date=OLD_START)
    sid = f"S-{uuid.uuid4().hex[:10]}"
    original = new_envelope(CancellationSubmitted(**client.form(contract), submission_id=sid), producer="callcentre",
                            correlation_id=sid, causation_id=None).to_bytes()
    consumer = f"opstest-{uuid.uuid4().hex[:8]}"
    headers = [("dlq.reason", b"RuntimeError: a bug, fixed since"), ("dlq.source.topic", topics.SUBMISSIONS.encode()),
               ("dlq.source.partition", b"0"), ("dlq.source.offset", b"424242"), ("dlq.consumer", consumer.encode()),
               ("dlq.failed_at", datetime.now(timezone.utc).isoformat().encode()), ("origin", b"callcentre")]
    dlq_partition, dlq_offset = await client.publish_raw(topics.dlq(topics.SUBMISSIONS), original, key=contract,
                                                         headers=headers)
    where = f"{topics.dlq(topics.SUBMISSIONS)}:{dlq_partition}:{dlq_offset}"

    first = await replay_dead_letters(infra.bootstrap, topics.SUBMISSIONS, consumer)
    assert [(r.dead_letter, r.status) for r in first] == [(where, "replayed")]
    rid = await client.find_request_by_submission(db, sid)
    assert (await client.wait_status(rid, lambda s: s["status"] != "received"))["status"] == "accepted"

    out = await cancelflow(infra, "dlq", "replay", topics.SUBMISSIONS, "--consumer", consumer)
    assert where in out and out.strip().splitlines()[-1] == "1 already replayed"
    again = await replay_dead_letters(infra.bootstrap, topics.dlq(topics.SUBMISSIONS), consumer)
    assert [(r.dead_letter, r.status) for r in again] == [(where, "already replayed")]

    copies = await read_topic(infra.bootstrap, topics.SUBMISSIONS,
                              lambda r: dict(r.headers).get("dlq.replayed_from") == where.encode())
    assert len(copies) == 1
    copy = copies[0]
    assert (copy.key, copy.value) == (contract.encode(), original)
    assert first[0].to == f"{topics.SUBMISSIONS}:{copy.partition}:{copy.offset}"
    assert dict(copy.headers)["origin"] == b"callcentre" and not any(
        k.startswith("dlq.") and k != "dlq.replayed_from" for k, _ in copy.headers)
    await asyncio.sleep(0.5)
    assert await db.fetchval("SELECT count(*) FROM intake.requests WHERE submission_id = $1", sid) == 1
    assert [d.replayed for d in await list_dead_letters(infra.bootstrap, topics.SUBMISSIONS, consumer)] == [True]


async def test_top_shows_offsets_lag_and_dead_letters(client, infra):
    await client.sign_contract(start_date=OLD_START)  # waits until eligibility and billing consumed it
    view = await top_once(infra.bootstrap, interval=0.2)
    assert {r.topic for r in view.topics} == set(topics.all_with_dlq())
    lag = {(r.service, r.topic): r.lag for r in view.lags}
    assert set(lag) == {("intake", topics.SUBMISSIONS), ("intake", topics.DECISIONS), ("intake", topics.SETTLEMENTS),
                        ("intake", topics.NOTIFICATIONS), ("intake", topics.CONTRACTS),
                        ("eligibility", topics.CONTRACTS),
                        ("eligibility", topics.REQUESTS), ("billing", topics.CONTRACTS), ("billing", topics.DECISIONS),
                        ("notifier", topics.REQUESTS), ("notifier", topics.DECISIONS), ("notifier", topics.SETTLEMENTS),
                        ("notifier", topics.CONTRACTS)}  # customer.erasure_requested
    assert lag[("eligibility", topics.CONTRACTS)] == 0 and lag[("billing", topics.CONTRACTS)] == 0
    contracts = next(r for r in view.topics if r.topic == topics.CONTRACTS)
    assert contracts.end > 0 and contracts.rate is not None
    # the DLQ counts are what is on the .dlq topics
    dead = await read_records(infra.bootstrap, [topics.dlq(t) for t in topics.ALL])
    assert view.dlq == {topics.dlq(t): sum(r.topic == topics.dlq(t) for r in dead) for t in topics.ALL}

    out = await cancelflow(infra, "top", "--once", "--interval", "0.2")
    assert "lag per service's consumer group" in out
    assert f"dead letters: {sum(view.dlq.values())} " in out
    for name in ("intake", "eligibility", "billing", "notifier", *topics.ALL):
        assert name in out


async def test_report_reads_the_log_and_writes_the_page(infra, tmp_path):
    page = tmp_path / "report.html"
    out = await cancelflow(infra, "report", "--html", str(page))
    assert "save rate" in out and "accepted cancellations" in out
    html = page.read_text(encoding="utf-8")
    assert html.count('class="bar"') == 7 and "<svg" in html and "Cancellations report" in html


async def test_report_streamed_equals_the_report_of_every_record_and_since_reads_from_a_time(infra, client):
    """The streamed report (a fetch at a time) gives the figures of all the records at once; --since starts
    at the offset of that time: a cancellation made after it is in, the rest of the suite's are not."""
    from datetime import datetime, timedelta, timezone

    from cancelflow.ops.records import read_records
    from cancelflow.report import REPORT_TOPICS, compute_report, stream_figures

    before_all = datetime.now(timezone.utc) - timedelta(seconds=1)
    contract = await client.sign_contract(start_date=OLD_START)
    rid = (await client.submit(client.form(contract))).json()["request_id"]
    await client.wait_status(rid, lambda s: s["settlement"] is not None and len(s["notifications"]) >= 3)
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for _ in range(5):  # other tests' reminders may still be going out between the two reads
        everything = compute_report([dict(r.envelope) for r in await read_records(infra.bootstrap, REPORT_TOPICS, 60)
                                     if r.envelope is not None], generated_at=at)
        streamed = await stream_figures(infra.bootstrap, generated_at=at)
        if streamed == everything:
            break
        await asyncio.sleep(1)
    assert streamed == everything and streamed.accepted >= 1
    recent = await stream_figures(infra.bootstrap, before_all, generated_at=at)
    assert 1 <= recent.accepted < everything.accepted or everything.accepted == 1
    assert recent.notifications_by_kind.get("acknowledgement", 0) >= 1
    future = await stream_figures(infra.bootstrap, datetime.now(timezone.utc) + timedelta(days=1), generated_at=at)
    assert future.accepted == 0
