"""The messaging layer's pure parts: the one way to emit, the outbox buffer, dead letters, retries."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson
import pytest

from shared import topics
from shared.events import WithdrawalRequested
from shared.messaging.dlq import dead_letter
from shared.messaging.doorbell import Doorbell
from shared.messaging.outbox import Emitter, Outbox
from shared.retry import until_it_works


def test_an_emitted_event_is_an_outbox_row_with_its_envelope_and_headers() -> None:
    outbox = Outbox(conn=None, schema="intake")
    envelope = Emitter(outbox, "intake", correlation_id="R-1", causation_id="E-0")(
        WithdrawalRequested(request_id="R-1", contract_id="C-1"), key="C-1")
    [(topic, key, value, headers)] = outbox.rows
    assert (topic, key) == (topics.REQUESTS, b"C-1")
    body = orjson.loads(value)
    assert body["event_id"] == str(envelope.event_id) and body["producer"] == "intake"
    assert (body["correlation_id"], body["causation_id"]) == ("R-1", "E-0")
    assert dict(headers) == {"event_type": "cancellation.withdrawal_requested", "schema_version": "1"}


def test_a_rolled_back_record_leaves_no_row_and_no_notify() -> None:
    outbox = Outbox(conn=None, schema="notifier")
    outbox.add("t", b"k", b"first")
    mark = outbox.mark()
    outbox.add("t", b"k", b"second")
    outbox.notify("notifier_due")
    outbox.rollback_to(mark)
    assert [r[2] for r in outbox.rows] == [b"first"] and not outbox.channels


class _Conn:
    """Answers the outbox's one statement (no rows, so no ids) and keeps its parameters."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    async def fetchval(self, sql: str, *args: object) -> list[int]:
        self.sent.append(args)
        return []


async def test_a_committed_transaction_rings_this_process_and_notifies_the_others_with_its_token() -> None:
    doorbell, heard = Doorbell(), []
    doorbell.listen("notifier_due", lambda: heard.append("due"))
    conn = _Conn()
    outbox = Outbox(conn, schema="notifier", doorbell=doorbell)
    outbox.notify("notifier_due")
    outbox.notify("notifier_due")
    await outbox.flush()
    assert heard == [], "not before the commit"
    [args] = conn.sent
    assert args[4] == ["notifier_due"] and args[5] == doorbell.token, "the NOTIFY's payload says who sent it"
    outbox.committed()
    assert heard == ["due"], "once, however often the transaction asked"
    assert doorbell.rung_here(doorbell.token) and not doorbell.rung_here("") and not doorbell.rung_here(Doorbell().token)


async def test_a_rolled_back_transaction_rings_nothing() -> None:
    doorbell, heard = Doorbell(), []
    doorbell.listen("notifier_due", lambda: heard.append("due"))
    outbox = Outbox(_Conn(), schema="notifier", doorbell=doorbell)
    outbox.notify("notifier_due")
    await outbox.flush()
    outbox.abandoned()
    outbox.committed()
    assert heard == []


@dataclass
class _Record:
    topic: str = topics.SUBMISSIONS
    partition: int = 2
    offset: int = 41
    key: bytes | None = b"C-1"
    value: bytes | None = b"\xff"
    headers: tuple = (("event_type", b"cancellation.submitted"), ("dlq.reason", b"an old one"))


def test_a_dead_letter_keeps_the_bytes_says_where_from_and_masks_the_reason() -> None:
    outbox = Outbox(conn=None, schema="intake")
    dead_letter(outbox, _Record(), "data.customer.email: taro@example.jp is not allowed", consumer="intake")
    [(topic, key, value, headers)] = outbox.rows
    assert (topic, key, value) == (topics.dlq(topics.SUBMISSIONS), b"C-1", b"\xff")
    h = dict(headers)
    assert h["dlq.reason"] == "data.customer.email: t***@example.jp is not allowed"
    assert (h["dlq.source.topic"], h["dlq.source.partition"], h["dlq.source.offset"]) == (topics.SUBMISSIONS, "2", "41")
    assert h["dlq.consumer"] == "intake" and h["event_type"] == "cancellation.submitted"
    assert [k for k, _ in headers].count("dlq.reason") == 1, "an earlier dead letter's headers are not carried"


async def test_until_it_works_retries_failures_and_returns_the_result() -> None:
    attempts = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("not yet")
        return "up"

    assert await until_it_works("a flaky thing", flaky, first_s=0.001, most_s=0.002) == "up"
    assert len(attempts) == 3


async def test_until_it_works_never_swallows_a_cancellation() -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await until_it_works("a cancelled thing", cancelled, first_s=0.001)
