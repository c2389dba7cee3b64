"""`cancelflow trace` and `cancelflow tail`: the pure parts (records in, rows or lines out)."""

from __future__ import annotations

import uuid

import orjson

from cancelflow.ops.records import Record, mask_personal_data
from cancelflow.ops.tail import render_line
from cancelflow.ops.tracing import trace_rows

RID = "req-1"


def record(topic: str, offset: int, event_type: str, data: dict, *, at: str, producer: str = "svc",
           correlation_id: str = RID, event_id: str | None = None, ts_ms: int = 0, headers: dict | None = None,
           partition: int = 0) -> Record:
    envelope = {"event_id": event_id or str(uuid.uuid4()), "event_type": event_type, "schema_version": 1,
                "occurred_at": at, "producer": producer, "correlation_id": correlation_id, "causation_id": None,
                "data": data}
    value = orjson.dumps(envelope)
    return Record(topic, partition, offset, ts_ms, b"C-1", value, headers or {}, envelope)


def test_a_request_across_topics_in_time_order_with_deltas():
    accepted_id = str(uuid.uuid4())
    records = [
        record("notifications.sent", 7, "notification.sent",
               {"request_id": RID, "kind": "acknowledgement", "recipient": "t***@example.jp"},
               at="2025-03-01T00:00:00.450+00:00", producer="notifier"),
        record("cancellation.decisions", 3, "cancellation.accepted",
               {"request_id": RID, "effective_date": "2025-04-20", "offers": ["consultation", "discount"]},
               at="2025-03-01T09:00:00.120+09:00", producer="eligibility", event_id=accepted_id),
        # the same event published twice by the outbox: shown once
        record("cancellation.decisions", 4, "cancellation.accepted", {"request_id": RID},
               at="2025-03-01T09:00:00.120+09:00", producer="eligibility", event_id=accepted_id),
        record("cancellation.requests", 1, "cancellation.requested",
               {"request_id": RID, "source": "http", "reason": "SWITCHING_TOOL", "received_on": "2025-03-01"},
               at="2025-03-01T00:00:00Z", producer="intake"),
        record("billing.settlements", 2, "settlement.issued",
               {"request_id": RID, "total_jpy": 24000, "charges": [{}, {}], "paid_through": "2025-05-01"},
               at="2025-03-01T00:00:00.300Z", producer="billing", correlation_id="something-else"),
        # another request's events
        record("cancellation.decisions", 5, "cancellation.accepted", {"request_id": "req-2"},
               at="2025-03-01T00:00:00.200Z", correlation_id="req-2"),
        # not an envelope at all
        Record("cancellation.requests", 9, 0, None, b"{broken", {}, None),
    ]
    rows = trace_rows(records, RID)
    assert [(r.topic, r.offset, r.event_type, r.producer) for r in rows] == [
        ("cancellation.requests", 1, "cancellation.requested", "intake"),
        ("cancellation.decisions", 3, "cancellation.accepted", "eligibility"),
        ("billing.settlements", 2, "settlement.issued", "billing"),  # matched by data.request_id
        ("notifications.sent", 7, "notification.sent", "notifier"),
    ]
    assert [r.delta_ms for r in rows] == [0, 120, 300, 450]
    assert rows[1].detail == "effective=2025-04-20 offers=consultation,discount"
    assert rows[2].detail == "total_jpy=24000 charges=2 paid_through=2025-05-01"
    assert rows[3].detail == "kind=acknowledgement to=t***@example.jp"


def test_a_kafka_submission_and_a_dead_letter_belong_to_the_request():
    sid = "S-77"
    submitted = record("cancellation.submissions", 0, "cancellation.submitted",
                       {"submission_id": sid, "reason": "NO_LONGER_USED"}, at="2025-03-01T00:00:00Z",
                       producer="callcentre", correlation_id=sid)
    requested = record("cancellation.requests", 0, "cancellation.requested",
                       {"request_id": RID, "source": "kafka", "submission_id": sid}, at="2025-03-01T00:00:01Z",
                       producer="intake", correlation_id=sid)
    # notifier could not handle the acceptance: the dead letter carries the original bytes; its time is when it failed
    poisoned = record("cancellation.decisions", 1, "cancellation.accepted", {"request_id": RID},
                      at="2025-03-01T00:00:02Z", correlation_id=sid)
    dead = Record("cancellation.decisions.dlq", 0, 0, 0, poisoned.key, poisoned.value,
                  {"dlq.reason": "ValueError: mail to taro@example.jp refused", "dlq.consumer": "notifier",
                   "dlq.failed_at": "2025-03-01T00:00:05+00:00", "dlq.source.topic": "cancellation.decisions"},
                  poisoned.envelope)
    other_submission = record("cancellation.submissions", 1, "cancellation.submitted", {"submission_id": "S-78"},
                              at="2025-03-01T00:00:00Z", correlation_id="S-78")
    rows = trace_rows([dead, poisoned, other_submission, requested, submitted], RID)
    assert [(r.topic, r.delta_ms) for r in rows] == [
        ("cancellation.submissions", 0), ("cancellation.requests", 1000), ("cancellation.decisions", 2000),
        ("cancellation.decisions.dlq", 5000)]
    assert rows[-1].detail == "dead-lettered by notifier: ValueError: mail to t***@example.jp refused"


def test_an_unknown_request_has_no_rows():
    assert trace_rows([record("cancellation.requests", 0, "cancellation.requested", {"request_id": "x"},
                              at="2025-03-01T00:00:00Z", correlation_id="x")], RID) == []


def test_a_tail_line_masks_personal_data_wherever_it_is():
    r = record("cancellation.requests", 3, "cancellation.requested",
               {"request_id": RID, "customer": {"name": "山田 太郎", "email": "taro.yamada@example.jp",
                                                "phone": "090-1234-5678"},
                "feedback": "call me on +81 90 1234 5678 or write to hanako@example.com"},
               at="2025-03-01T00:00:00Z", producer="intake")
    line = render_line(r)
    assert line.startswith("cancellation.requests[0]@3 2025-03-01T00:00:00Z cancellation.requested producer=intake")
    for clear in ("taro.yamada@example.jp", "1234-5678", "hanako@example.com", "90 1234 5678"):
        assert clear not in line
    assert '"email":"t***@example.jp"' in line and '"phone":"***78"' in line
    assert "h***@example.com" in line and "山田 太郎" in line


def test_a_phone_or_email_that_masking_does_not_recognise_is_still_hidden():
    masked = mask_personal_data({"data": {"customer": {"email": "not-an-address", "phone": "12"}},
                                 "list": [{"customer": {"email": "a@b.example"}}]})
    assert masked["data"]["customer"] == {"email": "***", "phone": "***"}
    assert masked["list"][0]["customer"]["email"] == "a***@b.example"


def test_a_dead_letter_line_shows_its_reason_and_poison_is_shown_not_hidden():
    dead = Record("cancellation.submissions.dlq", 1, 0, 1_740_787_200_000, b"C-9", b"{not json 090-1234-5678",
                  {"dlq.reason": "value: not JSON", "dlq.source.topic": "cancellation.submissions",
                   "dlq.source.partition": "2", "dlq.source.offset": "41", "dlq.consumer": "intake"})
    line = render_line(dead)
    assert "(not an envelope)" in line and "2025-03-01T00:00:00+00:00" in line
    assert "dlq.reason='value: not JSON' source=cancellation.submissions:2:41 consumer=intake" in line
    assert "1234-5678" not in line
