"""`cancelflow dlq` and `cancelflow top`: the pure parts."""

from __future__ import annotations

from cancelflow.ops.dlq import dead_letters, dlq_topics, replay_group, replay_headers
from cancelflow.ops.records import Record
from cancelflow.ops.top import LagRow, Snapshot, TopicRow, service_topics, top_view
from shared import topics


def dead(offset: int, consumer: str, *, partition: int = 0, topic: str = "cancellation.decisions.dlq",
         source_offset: int = 10, extra: dict | None = None) -> Record:
    headers = {"dlq.reason": "value: not JSON; customer wrote taro@example.jp", "dlq.source.topic": topic[:-4],
               "dlq.source.partition": "3", "dlq.source.offset": str(source_offset), "dlq.consumer": consumer,
               "dlq.failed_at": "2025-03-01T00:00:00+00:00"} | (extra or {})
    return Record(topic, partition, offset, 0, b"C-1", b"{not json", headers, None)


def test_dead_letters_are_listed_with_their_reason_source_and_replay_mark():
    records = [dead(1, "intake", source_offset=11), dead(0, "billing"),
               dead(0, "intake", topic="cancellation.submissions.dlq", partition=2),
               Record("cancellation.decisions", 0, 0, 0, None, b"{}", {}, {})]  # not a dead letter
    marks = {"billing": {("cancellation.decisions.dlq", 0): 1}}  # billing's first was replayed
    rows = dead_letters(records, marks)
    assert [(d.where, d.consumer, d.replayed) for d in rows] == [
        ("cancellation.decisions.dlq:0:0", "billing", True),
        ("cancellation.decisions.dlq:0:1", "intake", False),
        ("cancellation.submissions.dlq:2:0", "intake", False)]
    assert rows[1].source == "cancellation.decisions:3:11" and rows[1].key == "C-1"
    assert rows[1].reason == "value: not JSON; customer wrote t***@example.jp"


def test_a_replay_carries_the_original_headers_and_where_it_comes_from():
    r = dead(5, "notifier", partition=2, extra={"event_type": "cancellation.accepted", "traceparent": "00-abc"})
    assert replay_headers(r) == [("event_type", b"cancellation.accepted"),
                                 ("traceparent", b"00-abc"),
                                 ("dlq.replayed_from", b"cancellation.decisions.dlq:2:5")]


def test_a_replay_keeps_binary_and_repeated_headers_as_they_were():
    r = Record("cancellation.requests.dlq", 0, 9, 0, b"C-1", b"{}", {"x": "\ufffd", "dlq.consumer": "eligibility"}, None,
               raw_headers=(("x", b"\xff\x00"), ("x", b"second"), ("dlq.consumer", b"eligibility")))
    assert replay_headers(r) == [("x", b"\xff\x00"), ("x", b"second"),
                                 ("dlq.replayed_from", b"cancellation.requests.dlq:0:9")]


def test_which_dlq_topics_and_which_marker_group():
    assert dlq_topics("cancellation.submissions") == ("cancellation.submissions.dlq",)
    assert dlq_topics("cancellation.submissions.dlq") == ("cancellation.submissions.dlq",)
    assert len(dlq_topics(None)) == len(topics.ALL) and all(t.endswith(".dlq") for t in dlq_topics(None))
    assert replay_group("intake") == "cancelflow-dlq-replay.intake"


def test_top_rates_lags_and_dead_letter_counts():
    prev = Snapshot(10.0, begin={}, end={("cancellation.requests", 0): 100, ("cancellation.requests", 1): 50,
                                          ("cancellation.requests.dlq", 0): 0}, committed={})
    cur = Snapshot(12.0,
                   begin={("cancellation.requests", 0): 20, ("cancellation.requests", 1): 0,
                          ("cancellation.requests.dlq", 0): 0},
                   end={("cancellation.requests", 0): 130, ("cancellation.requests", 1): 60,
                        ("cancellation.requests.dlq", 0): 3},
                   committed={"eligibility": {("cancellation.requests", 0): 125, ("cancellation.requests", 1): 60},
                              "notifier-blue": {("cancellation.requests", 0): 130}})
    view = top_view(prev, cur, {"eligibility": ("cancellation.requests",), "notifier": ("cancellation.requests",)},
                    groups={"eligibility": "eligibility", "notifier": "notifier-blue"})
    assert view.topics == [TopicRow("cancellation.requests", 2, 190, 170, 20.0),  # (190 - 150) / 2 s
                           TopicRow("cancellation.requests.dlq", 1, 3, 3, 1.5)]
    assert view.lags == [
        LagRow("eligibility", "eligibility", "cancellation.requests", 185, 5),
        # partition 1 never committed by notifier-blue: everything from its first offset is lag
        LagRow("notifier", "notifier-blue", "cancellation.requests", 130, 60)]
    assert view.dlq == {"cancellation.requests.dlq": 3}
    first = top_view(None, cur, {"eligibility": ("cancellation.requests",)})
    assert first.topics[0].rate is None


def test_top_fits_a_terminal_with_a_row_per_topic_and_a_column_per_service():
    from datetime import datetime, timezone

    from rich.console import Console

    from cancelflow.ops.top import TopView, top_renderable

    view = TopView(
        topics=[TopicRow("cancellation.requests", 4, 190, 170, 20.0), TopicRow("cancellation.requests.dlq", 4, 3, 3, 0.0),
                TopicRow("contracts.events", 4, 7, 7, None)],
        lags=[LagRow("eligibility", "eligibility", "cancellation.requests", 185, 5),
              LagRow("eligibility", "eligibility", "contracts.events", 7, 0),
              LagRow("notifier", "notifier-blue", "cancellation.requests", 130, 60)],
        dlq={"cancellation.requests.dlq": 3, "contracts.events.dlq": 0})
    console = Console(width=80, record=True, color_system=None)
    console.print(top_renderable(view, "kafka:9092", datetime(2025, 3, 1, tzinfo=timezone.utc)))
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80 and len(lines) <= 24
    header = next(line for line in lines if "topic" in line).split()
    assert header == ["topic", "end", "msg/s", "eligibility", "notifier", "(notifier-blue)", "dlq"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.strip().startswith(("cancellation", "contracts"))}
    assert rows == {"cancellation.requests": ["190", "20.0", "5", "60", "3"],
                    "contracts.events": ["7", "-", "0", "0"]}  # notifier does not read contracts.events: blank
    assert lines[-1].startswith("lag: 65 record(s) behind; dead letters: 3")


def test_the_lag_view_follows_what_the_services_really_subscribe_to():
    """The topics `top` computes lag for are the ones each service's FastStream subscriber reads."""
    from cancelflow.asyncapi import service_brokers

    subscribed = {name: tuple(t for sub in broker.subscribers for t in sub.specification.topics)
                  for name, broker in service_brokers().items()}
    assert {k: set(v) for k, v in service_topics().items()} == {k: set(v) for k, v in subscribed.items()}
    assert set(service_topics()) == {"intake", "eligibility", "billing", "notifier"}
