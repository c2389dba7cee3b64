"""Operator commands: `trace`, `tail`, `dlq list|replay`, `top`, `report`, `asyncapi`.

They read Kafka like any other client (nothing here touches the services' databases). Each command's
figures come from a pure function over decoded records (`Record`), so they are unit-tested without a broker;
the functions that talk to Kafka are thin and tested against the real stack.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.console import Console, Group
from rich.table import Table

from shared import topics
from shared.logging import mask_pii

from .report import parse_instant

app = typer.Typer(add_completion=False, help="Operate a running pipeline.")
dlq_app = typer.Typer(add_completion=False, no_args_is_help=True,
                      help="Dead letters: list them with their reasons, replay them to their source topic.")
app.add_typer(dlq_app, name="dlq")
console = Console()

SERVICES = ("intake", "eligibility", "billing", "notifier")
DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
REPLAY_GROUP_PREFIX = "cancelflow-dlq-replay"
REPLAYED_FROM = "dlq.replayed_from"
UNKNOWN_CONSUMER = "unknown"


def register(main: typer.Typer) -> None:
    """Add these commands (and the `dlq` group) to the main `cancelflow` app."""
    main.registered_commands += app.registered_commands
    main.registered_groups += app.registered_groups


# --- where Kafka is ------------------------------------------------------------------------------------

def default_bootstrap() -> str:
    """The running local stack's broker (`.stack/stack.json`), else the default port."""
    from .stack import StackConfig

    state = StackConfig().root / "stack.json"
    try:
        return json.loads(state.read_text())["endpoints"]["KAFKA_BOOTSTRAP_SERVERS"]
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_BOOTSTRAP


def _bootstrap(value: str | None) -> str:
    return value or default_bootstrap()


BOOTSTRAP = typer.Option(None, "--bootstrap", envvar="KAFKA_BOOTSTRAP_SERVERS",
                         help="Kafka bootstrap servers [default: the local stack's, else 127.0.0.1:19092].",
                         show_default=False)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    except Exception as exc:  # noqa: BLE001 - an operator wants one line, not a traceback
        from aiokafka.errors import KafkaError

        if isinstance(exc, (KafkaError, OSError, ValueError)):
            console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", highlight=False)
            raise typer.Exit(1) from None
        raise


# --- records -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    """One Kafka record, decoded as far as it goes: `envelope` is the JSON object, or None."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)
    envelope: Mapping[str, Any] | None = None
    raw_headers: tuple[tuple[str, bytes], ...] = ()  # as on the wire: bytes, repeated keys kept

    @property
    def is_dead_letter(self) -> bool:
        return self.topic.endswith(topics.DLQ_SUFFIX)

    @property
    def data(self) -> Mapping[str, Any]:
        data = (self.envelope or {}).get("data")
        return data if isinstance(data, dict) else {}

    @property
    def event_type(self) -> str | None:
        value = (self.envelope or {}).get("event_type")
        return value if isinstance(value, str) else None

    @property
    def kafka_time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, timezone.utc)


def decode_record(r: Any) -> Record:
    """An aiokafka ConsumerRecord -> Record (never raises: poison is shown, not hidden)."""
    headers = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)) for k, v in (r.headers or ())}
    envelope = None
    if r.value:
        try:
            obj = orjson.loads(r.value)
            envelope = obj if isinstance(obj, dict) else None
        except orjson.JSONDecodeError:
            envelope = None
    raw = tuple((k, v if isinstance(v, bytes) else str(v).encode()) for k, v in (r.headers or ()))
    return Record(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, headers, envelope, raw)


def event_time(record: Record) -> datetime:
    """When it happened: a dead letter at `dlq.failed_at`, an event at its `occurred_at`, else the log time."""
    if record.is_dead_letter:
        return parse_instant(record.headers.get("dlq.failed_at")) or record.kafka_time
    return parse_instant((record.envelope or {}).get("occurred_at")) or record.kafka_time


async def read_records(bootstrap: str, topic_names: Iterable[str], timeout: float = 20) -> list[Record]:
    """Every record now on these topics (missing topics are skipped), decoded; via `client.read_topic`."""
    from .client import read_topic

    async def one(topic: str) -> list:
        try:
            return await read_topic(bootstrap, topic, timeout=timeout)
        except ValueError:  # the topic does not exist (yet)
            return []

    batches = await asyncio.gather(*(one(t) for t in topic_names))
    return [decode_record(r) for batch in batches for r in batch]


# --- masking -------------------------------------------------------------------------------------------

def _mask_value(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    masked = mask_pii(value)
    return masked if masked != value else "***"


def mask_personal_data(obj: Any) -> Any:
    """A copy with `customer.email` / `customer.phone` masked wherever a `customer` object appears."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key == "customer" and isinstance(value, dict):
                value = {k: (_mask_value(v) if k in ("email", "phone") else mask_personal_data(v))
                         for k, v in value.items()}
            else:
                value = mask_personal_data(value)
            out[key] = value
        return out
    if isinstance(obj, list):
        return [mask_personal_data(v) for v in obj]
    return obj


# --- trace ---------------------------------------------------------------------------------------------

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


async def collect_trace(bootstrap: str, request_id: str, timeout: float = 20) -> list[TraceRow]:
    return trace_rows(await read_records(bootstrap, topics.all_with_dlq(), timeout), request_id)


@app.command()
def trace(request_id: str = typer.Argument(..., help="The request_id (or a submission's correlation id)."),
          bootstrap: str = BOOTSTRAP,
          as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table.")) -> None:
    """Every event of one request across all topics (and their .dlq), in time order."""
    rows = _run(collect_trace(_bootstrap(bootstrap), request_id))
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


# --- tail ----------------------------------------------------------------------------------------------

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


async def follow(bootstrap: str, topic: str, *, from_beginning: bool, limit: int | None,
                 emit: Any = print, idle_timeout: float | None = None) -> int:
    """Print each record of `topic` as it comes; stop after `limit` records (or `idle_timeout` s of silence)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    shown = 0
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise ValueError(f"topic {topic} does not exist")
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
    _run(follow(_bootstrap(bootstrap), topic, from_beginning=from_beginning, limit=limit, idle_timeout=idle,
                emit=lambda line: print(line, flush=True)))


# --- dead letters --------------------------------------------------------------------------------------

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


async def replay_marks(bootstrap: str) -> dict[str, dict[tuple[str, int], int]]:
    """Every replay group's committed offsets, by the consumer whose dead letters it marks."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
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


async def list_dead_letters(bootstrap: str, topic: str | None = None, consumer: str | None = None,
                            timeout: float = 20) -> list[DeadLetter]:
    records, marks = await asyncio.gather(read_records(bootstrap, dlq_topics(topic), timeout),
                                          replay_marks(bootstrap))
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
    rows = _run(list_dead_letters(_bootstrap(bootstrap), topic, consumer))
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


async def replay_dead_letters(bootstrap: str, topic: str | None = None, consumer: str | None = None,
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
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import OffsetAndMetadata, TopicPartition

    records, marks = await asyncio.gather(read_records(bootstrap, dlq_topics(topic), timeout),
                                          replay_marks(bootstrap))
    letters = sorted((r for r in records if r.is_dead_letter), key=lambda r: (r.topic, r.partition, r.offset))
    results: list[Replay] = []
    committers: dict[str, AIOKafkaConsumer] = {}
    producer = None if dry_run else AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True,
                                                     acks="all", max_request_size=2 * 1024 * 1024 + 65536)
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
                committer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=replay_group(owner),
                                             enable_auto_commit=False)
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
    results = _run(replay_dead_letters(_bootstrap(bootstrap), topic, consumer, dry_run=dry_run))
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


# --- top -----------------------------------------------------------------------------------------------

def service_topics() -> dict[str, tuple[str, ...]]:
    """The topics each service consumes, from its handlers module."""
    from .asyncapi import service_subscriptions

    return {name: tuple(t for s in ss for t in s.topics) for name, ss in service_subscriptions().items()}


def consumer_group(service: str) -> str:
    """The service's consumer group: `<SERVICE>_CONSUMER_GROUP`, else its name."""
    return os.environ.get(f"{service.upper()}_CONSUMER_GROUP") or service


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    begin: Mapping[tuple[str, int], int]
    end: Mapping[tuple[str, int], int]
    committed: Mapping[str, Mapping[tuple[str, int], int]]  # group -> (topic, partition) -> offset


@dataclass(frozen=True)
class TopicRow:
    topic: str
    partitions: int
    end: int
    records: int
    rate: float | None


@dataclass(frozen=True)
class LagRow:
    service: str
    group: str
    topic: str
    committed: int
    lag: int


@dataclass(frozen=True)
class TopView:
    topics: list[TopicRow]
    lags: list[LagRow]
    dlq: dict[str, int]


def top_view(prev: Snapshot | None, cur: Snapshot, subscriptions: Mapping[str, Sequence[str]],
             groups: Mapping[str, str] | None = None) -> TopView:
    """End offsets, rates (records/s since `prev`), per-group lag per topic and DLQ counts.

    A partition a group has never committed on counts as unread from its first offset (the services start
    at the earliest offset)."""
    groups = groups or {s: s for s in subscriptions}
    by_topic: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for tp in cur.end:
        by_topic[tp[0]].append(tp)
    dt = cur.taken_at - prev.taken_at if prev is not None else 0
    rows = []
    for topic in sorted(by_topic):
        tps = by_topic[topic]
        end = sum(cur.end[tp] for tp in tps)
        rate = None
        if prev is not None and dt > 0:
            rate = max(0, end - sum(prev.end.get(tp, 0) for tp in tps)) / dt
        rows.append(TopicRow(topic, len(tps), end, sum(cur.end[tp] - cur.begin.get(tp, 0) for tp in tps), rate))
    lags = []
    for service, subscribed in subscriptions.items():
        group = groups.get(service, service)
        committed = cur.committed.get(group, {})
        for topic in subscribed:
            tps = by_topic.get(topic, [])
            done = sum(committed.get(tp, cur.begin.get(tp, 0)) for tp in tps)
            lag = sum(max(0, cur.end[tp] - committed.get(tp, cur.begin.get(tp, 0))) for tp in tps)
            lags.append(LagRow(service, group, topic, done, lag))
    dlq = {r.topic: r.records for r in rows if r.topic.endswith(topics.DLQ_SUFFIX)}
    return TopView(rows, lags, dlq)


def top_renderable(view: TopView, bootstrap: str, at: datetime | None = None) -> Group:
    """One compact table (fits a 24-line terminal): a row per topic with its end offset, rate, each service's
    lag on it (blank when the service does not read it) and its dead letters."""
    at = at or datetime.now(timezone.utc)
    services = list(dict.fromkeys(r.service for r in view.lags))
    lag = {(r.service, r.topic): r.lag for r in view.lags}
    groups = {r.service: r.group for r in view.lags}
    from rich import box

    t = Table(title=f"cancelflow top — {bootstrap} — {at.strftime('%Y-%m-%d %H:%M:%S')} UTC\n"
                    "lag per service's consumer group", title_justify="left", box=box.SIMPLE_HEAD,
              padding=(0, 0))
    t.add_column("topic", no_wrap=True)
    t.add_column("end", justify="right", no_wrap=True)
    t.add_column("msg/s", justify="right", no_wrap=True)
    for service in services:
        name = service if groups[service] == service else f"{service} ({groups[service]})"
        t.add_column(name, justify="right", no_wrap=True)
    t.add_column("dlq", justify="right", no_wrap=True)
    for r in view.topics:
        if r.topic.endswith(topics.DLQ_SUFFIX):
            continue
        cells = [r.topic, str(r.end), "-" if r.rate is None else f"{r.rate:.1f}"]
        for service in services:
            n = lag.get((service, r.topic))
            cells.append("" if n is None else (f"[yellow]{n}[/yellow]" if n else "0"))
        dead = view.dlq.get(topics.dlq(r.topic), 0)
        cells.append(f"[red]{dead}[/red]" if dead else "0")
        t.add_row(*cells)
    total_lag = sum(r.lag for r in view.lags)
    total_dead = sum(view.dlq.values())
    footer = (f"lag: {total_lag} record(s) behind; dead letters: {total_dead} "
              f"(`cancelflow dlq list`); Ctrl-C quits")
    return Group(t, footer)


class Sampler:
    """Takes snapshots of offsets with long-lived clients (one consumer for offsets, one admin for groups)."""

    def __init__(self, bootstrap: str, groups: Sequence[str]) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.admin import AIOKafkaAdminClient

        self.bootstrap = bootstrap
        self.groups = tuple(groups)
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
        self.admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)

    async def __aenter__(self) -> "Sampler":
        try:
            await self.consumer.start()
            await self.admin.start()
        except BaseException:
            await self.consumer.stop()
            await self.admin.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.admin.close()
        await self.consumer.stop()

    async def take(self) -> Snapshot:
        from aiokafka.structs import TopicPartition

        await self.consumer._client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics.all_with_dlq()
               for p in sorted(self.consumer.partitions_for_topic(t) or ())]
        begin = await self.consumer.beginning_offsets(tps) if tps else {}
        end = await self.consumer.end_offsets(tps) if tps else {}
        committed = {}
        for group in self.groups:
            offsets = await self.admin.list_consumer_group_offsets(group)
            committed[group] = {(tp.topic, tp.partition): m.offset for tp, m in offsets.items() if m.offset >= 0}
        return Snapshot(time.monotonic(), {(tp.topic, tp.partition): o for tp, o in begin.items()},
                        {(tp.topic, tp.partition): o for tp, o in end.items()}, committed)


async def top_once(bootstrap: str, interval: float = 1.0) -> TopView:
    subs = service_topics()
    groups = {s: consumer_group(s) for s in subs}
    async with Sampler(bootstrap, list(groups.values())) as sampler:
        first = await sampler.take()
        await asyncio.sleep(interval)
        return top_view(first, await sampler.take(), subs, groups)


async def _top_live(bootstrap: str, interval: float) -> None:
    from rich.live import Live

    subs = service_topics()
    groups = {s: consumer_group(s) for s in subs}
    async with Sampler(bootstrap, list(groups.values())) as sampler:
        prev = await sampler.take()
        with Live(top_renderable(top_view(None, prev, subs, groups), bootstrap), console=console,
                  refresh_per_second=4, screen=False, vertical_overflow="visible") as live:
            while True:
                await asyncio.sleep(interval)
                cur = await sampler.take()
                live.update(top_renderable(top_view(prev, cur, subs, groups), bootstrap))
                prev = cur


@app.command()
def top(once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
        interval: float = typer.Option(1.0, "--interval", min=0.05, help="Seconds between refreshes."),
        bootstrap: str = BOOTSTRAP) -> None:
    """A live view: per topic end offsets and rate, per service's consumer group the lag, DLQ counts."""
    bootstrap = _bootstrap(bootstrap)
    if once:
        console.print(top_renderable(_run(top_once(bootstrap, interval)), bootstrap))
        return
    _run(_top_live(bootstrap, interval))


# --- report and AsyncAPI (their modules hold the logic) ---------------------------------------------------

@app.command()
def report(html: Path = typer.Option(None, "--html", help="Also write a self-contained HTML page with charts."),
           as_json: bool = typer.Option(False, "--json", help="The same figures as JSON on stdout, no tables."),
           bootstrap: str = BOOTSTRAP) -> None:
    """Business figures: cancellations by reason per day, save rate, time to first answer, pending; offers taken,
    the lift against the holdout, feedback per reason."""
    from .report import collect_envelopes, compute_report, render_html, report_json, report_tables

    figures = compute_report(_run(collect_envelopes(_bootstrap(bootstrap))))
    if as_json:
        typer.echo(orjson.dumps(report_json(figures), option=orjson.OPT_INDENT_2).decode())
    for table in () if as_json else report_tables(figures):
        console.print(table)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(figures), encoding="utf-8")
        typer.echo(f"written {html}", err=as_json)


@app.command("asyncapi")
def asyncapi_cmd(out: Path = typer.Option(None, "--out", help="Where to write the YAML.",
                                          show_default="docs/asyncapi.yaml of the repository"),
                 serve: bool = typer.Option(False, "--serve", help="Serve the document as HTML (Ctrl-C stops)."),
                 host: str = typer.Option("127.0.0.1", "--host"),
                 port: int = typer.Option(8090, "--port")) -> None:
    """Generate the AsyncAPI 3 document of all four services' subscribers and what they publish."""
    from . import asyncapi

    written = asyncapi.write(out or asyncapi.DEFAULT_OUT)
    console.print(f"written {written}", highlight=False)
    if serve:
        console.print(f"serving http://{host}:{port}/ (raw: /asyncapi.yaml, /asyncapi.json); Ctrl-C stops",
                      highlight=False)
        try:
            asyncapi.serve(host, port)
        except KeyboardInterrupt:
            pass
