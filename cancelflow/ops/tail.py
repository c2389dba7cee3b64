"""`cancelflow tail`: follow a topic, one decoded line per record, personal data masked."""

from __future__ import annotations

import time
from typing import Any

import orjson
import typer

from shared.pii import mask_pii

from .. import kafka_clients
from ..kafka_clients import Target
from .base import BOOTSTRAP, app, connection, run
from .records import Record, decode_record, mask_personal_data


def render_line(record: Record) -> str:
    """One record as one line, personal data masked."""
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    key = record.key.decode("utf-8", "replace") if record.key else "-"
    if record.envelope is not None:
        env = mask_personal_data(dict(record.envelope))
        head = (f"{where} {env.get('occurred_at', record.kafka_time.isoformat())} {env.get('event_type', '?')} "
                f"producer={env.get('producer', '?')} key={key} correlation_id={env.get('correlation_id', '?')}")
        body = orjson.dumps(env.get("data"), option=orjson.OPT_SORT_KEYS).decode()
        line = f"{head} data={body}"
    else:
        shown = (record.value or b"")[:200].decode("utf-8", "replace")
        line = f"{where} {record.kafka_time.isoformat()} (not an envelope) key={key} value={shown!r}"
    if record.is_dead_letter:
        h = record.headers
        line += (f" | dlq.reason={h.get('dlq.reason', '')!r} source={h.get('dlq.source.topic')}:"
                 f"{h.get('dlq.source.partition')}:{h.get('dlq.source.offset')} consumer={h.get('dlq.consumer')}")
    return mask_pii(line)


async def follow(target: Target, topic: str, *, from_beginning: bool, limit: int | None,
                 emit: Any = print, idle_timeout: float | None = None) -> int:
    """Print each record of `topic` as it comes; stop after `limit` records (or `idle_timeout` s of silence)."""
    from aiokafka.structs import TopicPartition

    conn = kafka_clients.as_connection(target)
    partitions = (await kafka_clients.topic_partitions(conn, [topic])).get(topic)
    if not partitions:
        raise ValueError(f"topic {topic} does not exist")
    consumer = kafka_clients.consumer(conn)
    await consumer.start()
    shown = 0
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        last = time.monotonic()
        while limit is None or shown < limit:
            batch = await consumer.getmany(timeout_ms=500)
            records = sorted((r for rs in batch.values() for r in rs), key=lambda r: (r.timestamp, r.partition))
            for r in records:
                emit(render_line(decode_record(r)))
                shown += 1
                last = time.monotonic()
                if limit is not None and shown >= limit:
                    break
            if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                break
    finally:
        await consumer.stop()
    return shown


@app.command()
def tail(topic: str = typer.Argument(..., help="A topic, e.g. cancellation.decisions or cancellation.submissions.dlq."),
         from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the oldest record."),
         limit: int = typer.Option(None, "--limit", "-n", min=1, help="Stop after this many records."),
         idle: float = typer.Option(None, "--idle", help="Stop after this many seconds without a record."),
         bootstrap: str = BOOTSTRAP) -> None:
    """Follow a topic, one decoded line per record, personal data masked. Ctrl-C stops."""
    run(follow(connection(bootstrap), topic, from_beginning=from_beginning, limit=limit, idle_timeout=idle,
                emit=lambda line: print(line, flush=True)))
