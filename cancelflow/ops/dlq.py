"""`cancelflow dlq list|replay`: dead letters with their reasons; replayed to their source topic, each once."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import typer
from rich.table import Table

from shared import topics
from shared.pii import mask_pii

from .. import kafka_clients
from ..kafka_clients import Target
from .base import BOOTSTRAP, connection, console, dlq_app, run
from .records import Record, read_records

REPLAY_GROUP_PREFIX = "cancelflow-dlq-replay"
REPLAYED_FROM = "dlq.replayed_from"
UNKNOWN_CONSUMER = "unknown"


def replay_group(consumer: str) -> str:
    """The replay marker of one consumer's dead letters: its committed offsets on the .dlq partitions."""
    return f"{REPLAY_GROUP_PREFIX}.{consumer}"


def dlq_topics(topic: str | None) -> tuple[str, ...]:
    """`cancellation.submissions` or `cancellation.submissions.dlq` -> the .dlq topic; None -> all of them."""
    if topic is None:
        return tuple(topics.dlq(t) for t in topics.ALL)
    return (topic if topic.endswith(topics.DLQ_SUFFIX) else topics.dlq(topic),)


@dataclass(frozen=True)
class DeadLetter:
    topic: str
    partition: int
    offset: int
    key: str | None
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    consumer: str
    failed_at: str
    reason: str
    event_type: str | None
    replayed: bool

    @property
    def where(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    @property
    def source(self) -> str:
        return f"{self.source_topic}:{self.source_partition}:{self.source_offset}"


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def dead_letters(records: Iterable[Record], marks: Mapping[str, Mapping[tuple[str, int], int]]) -> list[DeadLetter]:
    """Dead-letter records -> rows; `marks[consumer][(dlq topic, partition)]` is the replay group's committed
    offset, so a dead letter below it has been replayed."""
    out = []
    for r in sorted((r for r in records if r.is_dead_letter), key=lambda r: (r.topic, r.partition, r.offset)):
        h = r.headers
        consumer = h.get("dlq.consumer", UNKNOWN_CONSUMER)
        mark = marks.get(consumer, {}).get((r.topic, r.partition), 0)
        out.append(DeadLetter(
            topic=r.topic, partition=r.partition, offset=r.offset,
            key=r.key.decode("utf-8", "replace") if r.key is not None else None,
            source_topic=h.get("dlq.source.topic") or r.topic.removesuffix(topics.DLQ_SUFFIX),
            source_partition=_int(h.get("dlq.source.partition")), source_offset=_int(h.get("dlq.source.offset")),
            consumer=consumer, failed_at=h.get("dlq.failed_at", r.kafka_time.isoformat()),
            reason=mask_pii(h.get("dlq.reason", "")), event_type=r.event_type, replayed=r.offset < mark))
    return out


async def replay_marks(target: Target) -> dict[str, dict[tuple[str, int], int]]:
    """Every replay group's committed offsets, by the consumer whose dead letters it marks."""
    admin = kafka_clients.admin(target)
    await admin.start()
    try:
        groups = [g[0] for g in await admin.list_consumer_groups()
                  if isinstance(g[0], str) and g[0].startswith(REPLAY_GROUP_PREFIX + ".")]
        marks = {}
        for group in sorted(groups):
            offsets = await admin.list_consumer_group_offsets(group)
            marks[group.removeprefix(REPLAY_GROUP_PREFIX + ".")] = {
                (tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
        return marks
    finally:
        await admin.close()


async def list_dead_letters(target: Target, topic: str | None = None, consumer: str | None = None,
                            timeout: float = 20) -> list[DeadLetter]:
    conn = kafka_clients.as_connection(target)
    records, marks = await asyncio.gather(read_records(conn, dlq_topics(topic), timeout), replay_marks(conn))
    rows = dead_letters(records, marks)
    return [d for d in rows if consumer is None or d.consumer == consumer]


def dead_letter_table(rows: Sequence[DeadLetter]) -> Table:
    table = Table(title=f"{len(rows)} dead letter(s)", title_justify="left")
    for col in ("dead letter", "source", "consumer", "failed at", "key", "event_type", "reason", "replayed"):
        table.add_column(col, overflow="fold")
    for d in rows:
        table.add_row(d.where, d.source, d.consumer, d.failed_at[:23], d.key or "-", d.event_type or "-", d.reason,
                      "yes" if d.replayed else "no", style="dim" if d.replayed else None)
    return table


@dlq_app.command("list")
def dlq_list(topic: str = typer.Argument(None, help="A topic or its .dlq (default: every .dlq topic)."),
             consumer: str = typer.Option(None, "--consumer", help="Only this service's dead letters."),
             bootstrap: str = BOOTSTRAP,
             as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table.")) -> None:
    """Dead letters with their reason, source topic/partition/offset, consumer, time, and whether replayed."""
    rows = run(list_dead_letters(connection(bootstrap), topic, consumer))
    if as_json:
        for d in rows:
            print(json.dumps(d.__dict__ | {"where": d.where, "source": d.source}, ensure_ascii=False))
        return
    console.print(dead_letter_table(rows))


@dataclass(frozen=True)
class Replay:
    dead_letter: str
    consumer: str
    status: str  # "replayed", "already replayed", "same source as <dead letter>", "dry run"
    to: str | None = None  # topic:partition:offset written


def replay_headers(record: Record) -> list[tuple[str, bytes]]:
    """The original headers (without the dlq.* ones), as they were on the wire, and where the replay comes from."""
    original = record.raw_headers or tuple((k, v.encode()) for k, v in record.headers.items())
    headers = [(k, v) for k, v in original if not k.startswith("dlq.")]
    headers.append((REPLAYED_FROM, f"{record.topic}:{record.partition}:{record.offset}".encode()))
    return headers


async def replay_dead_letters(target: Target, topic: str | None = None, consumer: str | None = None,
                              *, dry_run: bool = False, timeout: float = 20) -> list[Replay]:
    """Republish each dead letter not yet replayed to its source topic: original bytes, key and headers,
    plus `dlq.replayed_from`.

    The marker of what was replayed is the committed offset of `cancelflow-dlq-replay.<consumer>` on the
    .dlq partition, committed after each publish Kafka acknowledged (idempotent producer, acks=all), so a
    second run replays nothing twice. Only a crash between a publish and its commit can replay that one dead
    letter again, and the consumers' inboxes drop a second copy of an event they handled. One group per
    consumer, because each dead letter belongs to exactly one consumer (`dlq.consumer`) and `--consumer`
    must not mark another's dead letters. A record that several consumers of its topic dead-lettered is
    republished once per run.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import OffsetAndMetadata, TopicPartition

    conn = kafka_clients.as_connection(target)
    records, marks = await asyncio.gather(read_records(conn, dlq_topics(topic), timeout), replay_marks(conn))
    letters = sorted((r for r in records if r.is_dead_letter), key=lambda r: (r.topic, r.partition, r.offset))
    results: list[Replay] = []
    committers: dict[str, AIOKafkaConsumer] = {}
    producer = None if dry_run else kafka_clients.producer(conn)
    if producer is not None:
        await producer.start()
    replayed_sources: dict[tuple[str, str, str], Replay] = {}
    try:
        for r in letters:
            owner = r.headers.get("dlq.consumer", UNKNOWN_CONSUMER)
            if consumer is not None and owner != consumer:
                continue
            where = f"{r.topic}:{r.partition}:{r.offset}"
            if r.offset < marks.get(owner, {}).get((r.topic, r.partition), 0):
                results.append(Replay(where, owner, "already replayed"))
                continue
            source_topic = r.headers.get("dlq.source.topic") or r.topic.removesuffix(topics.DLQ_SUFFIX)
            source = (source_topic, r.headers.get("dlq.source.partition", ""), r.headers.get("dlq.source.offset", ""))
            if dry_run:
                results.append(Replay(where, owner, "dry run", source_topic))
                continue
            earlier = replayed_sources.get(source) if all(source) else None
            if earlier is not None:
                result = Replay(where, owner, f"same source as {earlier.dead_letter}", earlier.to)
            else:
                meta = await producer.send_and_wait(source_topic, r.value, key=r.key, headers=replay_headers(r))
                result = Replay(where, owner, "replayed", f"{meta.topic}:{meta.partition}:{meta.offset}")
                replayed_sources[source] = result
            committer = committers.get(owner)
            if committer is None:
                committer = kafka_clients.consumer(conn, group_id=replay_group(owner))
                await committer.start()
                committers[owner] = committer
            tp = TopicPartition(r.topic, r.partition)
            if tp not in committer.assignment():
                committer.assign([*committer.assignment(), tp])
            await committer.commit({tp: OffsetAndMetadata(r.offset + 1, where)})
            results.append(result)
    finally:
        for committer in committers.values():
            await committer.stop()
        if producer is not None:
            await producer.stop()
    return results


@dlq_app.command("replay")
def dlq_replay(topic: str = typer.Argument(None, help="A topic or its .dlq (default: every .dlq topic)."),
               consumer: str = typer.Option(None, "--consumer", help="Only this service's dead letters."),
               dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be replayed."),
               bootstrap: str = BOOTSTRAP) -> None:
    """Republish dead letters to their source topic, each once (marked in `cancelflow-dlq-replay.<consumer>`)."""
    results = run(replay_dead_letters(connection(bootstrap), topic, consumer, dry_run=dry_run))
    table = Table(title="replay" + (" (dry run)" if dry_run else ""), title_justify="left")
    for col in ("dead letter", "consumer", "status", "to"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(r.dead_letter, r.consumer, r.status, r.to or "-",
                      style="green" if r.status == "replayed" else "dim")
    console.print(table)
    counts: dict[str, int] = defaultdict(int)
    for r in results:
        counts[r.status.split(" as ")[0]] += 1
    console.print(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no dead letters", highlight=False)
