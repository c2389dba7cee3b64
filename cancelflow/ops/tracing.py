"""`cancelflow trace`: every event of one request across all topics (and their .dlq), in time order."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import typer
from rich.table import Table

from shared import topics
from shared.pii import mask_pii

from ..kafka_clients import Target, as_connection, stream_topic, topic_partitions
from .base import BOOTSTRAP, app, connection, console, run
from .records import Record, decode_record, event_time


@dataclass(frozen=True)
class TraceRow:
    at: datetime
    delta_ms: int
    topic: str
    partition: int
    offset: int
    event_type: str
    producer: str
    detail: str


def _matches(record: Record, ids: set[str]) -> bool:
    env = record.envelope or {}
    return env.get("correlation_id") in ids or record.data.get("request_id") in ids


def _detail(record: Record) -> str:
    d, t = record.data, record.event_type
    if record.is_dead_letter:
        return mask_pii(f"dead-lettered by {record.headers.get('dlq.consumer', '?')}: "
                        f"{record.headers.get('dlq.reason', '')}")
    parts: list[str] = []
    if t == "cancellation.submitted":
        parts = [f"submission_id={d.get('submission_id')}", f"reason={d.get('reason')}"]
    elif t == "cancellation.requested":
        parts = [f"source={d.get('source')}", f"reason={d.get('reason')}", f"received_on={d.get('received_on')}"]
        if d.get("desired_effective_date"):
            parts.append(f"desired={d.get('desired_effective_date')}")
    elif t == "cancellation.accepted":
        parts = [f"effective={d.get('effective_date')}", f"offers={','.join(d.get('offers') or []) or '-'}"]
    elif t == "cancellation.rejected":
        parts = [f"codes={','.join(d.get('codes') or [])}", f"earliest={d.get('earliest_effective_date')}"]
    elif t == "cancellation.completed":
        parts = [f"effective={d.get('effective_date')}"]
    elif t == "cancellation.withdrawal_refused":
        parts = [f"why={d.get('why')}"]
    elif t == "settlement.issued":
        parts = [f"total_jpy={d.get('total_jpy')}", f"charges={len(d.get('charges') or [])}",
                 f"paid_through={d.get('paid_through')}"]
    elif t == "notification.sent":
        parts = [f"kind={d.get('kind')}", f"to={d.get('recipient')}"]
    return mask_pii(" ".join(parts))


def trace_rows(records: Iterable[Record], request_id: str) -> list[TraceRow]:
    """The events of one request, in time order, with the delta from the first.

    An event belongs to the request when its envelope's `correlation_id` or its `data.request_id` is the
    request id; a Kafka submission's own events (correlated by its `submission_id`) come along once the
    request's `cancellation.requested` names that submission. Dead letters are matched on the original
    message they carry. The same event delivered twice (same topic, event_id) shows once.
    """
    records = [r for r in records if r.envelope is not None]
    ids = {request_id}
    for r in records:
        if r.event_type == "cancellation.requested" and r.data.get("request_id") == request_id \
                and r.data.get("source") == "kafka" and r.data.get("submission_id"):
            ids.add(str(r.data["submission_id"]))
    seen: set[tuple[str, Any]] = set()
    picked = []
    for r in records:
        if not _matches(r, ids):
            continue
        marker = (r.topic, r.envelope.get("event_id")) if not r.is_dead_letter else (r.topic, r.offset)
        if marker in seen:
            continue
        seen.add(marker)
        picked.append(r)
    picked.sort(key=lambda r: (event_time(r), r.timestamp_ms, r.topic, r.partition, r.offset))
    if not picked:
        return []
    first = event_time(picked[0])
    return [TraceRow(at=event_time(r), delta_ms=round((event_time(r) - first).total_seconds() * 1000),
                     topic=r.topic, partition=r.partition, offset=r.offset,
                     event_type=r.event_type or "?", producer=str(r.envelope.get("producer", "?")),
                     detail=_detail(r))
            for r in picked]


def trace_table(request_id: str, rows: Sequence[TraceRow]) -> Table:
    table = Table(title=f"request {request_id}", title_justify="left")
    for col in ("+ms", "at (UTC)", "topic", "p", "offset", "event_type", "producer", "detail"):
        table.add_column(col, justify="right" if col in ("+ms", "p", "offset") else "left",
                         overflow="fold")
    for r in rows:
        style = "red" if r.topic.endswith(topics.DLQ_SUFFIX) else None
        table.add_row(str(r.delta_ms), r.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], r.topic, str(r.partition),
                      str(r.offset), r.event_type, r.producer, r.detail, style=style)
    return table


# Where the other topics start, before the request's first record on the requests topic: its submission
# comes moments earlier, from an upstream clock that may be off.
TRACE_MARGIN_MS = 7 * 86_400_000


async def collect_trace(target: Target, request_id: str) -> list[TraceRow]:
    """The request's events, every topic streamed to its end a fetch at a time and only the request's
    records kept (a year of topics is read, never held, and never cut short by a time limit). The requests
    topic goes first: its `cancellation.requested` names the submission whose events come along, and its
    time is where the other topics start (less TRACE_MARGIN_MS). A record is decoded only when its bytes
    name one of the ids, so a year's records cost a substring search each."""
    conn = as_connection(target)
    existing = await topic_partitions(conn, topics.all_with_dlq())
    ids, kept, start_ms = {request_id}, [], None
    for topic in (topics.REQUESTS, *(t for t in topics.all_with_dlq() if t != topics.REQUESTS)):
        if topic not in existing:
            continue
        needles = tuple(i.encode() for i in ids)
        async for records in stream_topic(conn, topic, start_ms=start_ms if topic != topics.REQUESTS else None):
            for raw in records:
                if not any(n in (raw.value or b"") for n in needles):
                    continue
                r = decode_record(raw)
                if r.event_type == "cancellation.requested" and r.data.get("request_id") == request_id \
                        and r.data.get("source") == "kafka" and r.data.get("submission_id"):
                    ids.add(str(r.data["submission_id"]))
                if r.envelope is not None and _matches(r, ids):
                    kept.append(r)
        if topic == topics.REQUESTS and kept:
            start_ms = min(r.timestamp_ms for r in kept) - TRACE_MARGIN_MS
    return trace_rows(kept, request_id)


@app.command()
def trace(request_id: str = typer.Argument(..., help="The request_id (or a submission's correlation id)."),
          bootstrap: str = BOOTSTRAP,
          as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table.")) -> None:
    """Every event of one request across all topics (and their .dlq), in time order."""
    rows = run(collect_trace(connection(bootstrap), request_id))
    if not rows:
        console.print(f"no event of {request_id} on any topic", highlight=False)
        raise typer.Exit(3)
    if as_json:
        for r in rows:
            print(json.dumps({"delta_ms": r.delta_ms, "at": r.at.isoformat(), "topic": r.topic,
                              "partition": r.partition, "offset": r.offset, "event_type": r.event_type,
                              "producer": r.producer, "detail": r.detail}, ensure_ascii=False))
        return
    console.print(trace_table(request_id, rows))
