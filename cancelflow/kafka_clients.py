"""The one factory of Kafka clients outside the services: operator commands, `cancelflow.client`, the demo
and the benchmark build their producers, consumers and admin clients here, from a `KafkaConnection`, so a
secured cluster (SASL/SCRAM, TLS) works for all of them alike.

Where the connection comes from, first that applies: the `KAFKA_*` environment variables (as `cancelflow up`
prints them); else the running local stack's own settings (`.stack/stack.json`); else the default port.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from shared.kafka_connection import MAX_REQUEST_BYTES, KafkaConnection, describe_partitions

Target = KafkaConnection | str | None


def stack_client_env() -> dict[str, str]:
    """The client settings the running local stack recorded (empty when none runs)."""
    from .stack_config import StackConfig

    try:
        state = json.loads((StackConfig().root / "stack.json").read_text())
    except (OSError, ValueError):
        return {}
    client = state.get("client") or {}
    if not client:  # a stack started before the security settings were recorded
        client = {k: v for k, v in (state.get("endpoints") or {}).items() if k == "KAFKA_BOOTSTRAP_SERVERS"}
    return {k: str(v) for k, v in client.items()}


def connection(bootstrap: str | None = None) -> KafkaConnection:
    """The connection an operator means: the environment's settings, else the local stack's."""
    if "KAFKA_BOOTSTRAP_SERVERS" in os.environ or "KAFKA_SECURITY_PROTOCOL" in os.environ:
        conn = KafkaConnection()
    else:
        stack = stack_client_env()
        same_stack = bootstrap is None or bootstrap == stack.get("KAFKA_BOOTSTRAP_SERVERS")
        conn = KafkaConnection.model_validate(stack) if stack and same_stack else KafkaConnection()
    return conn if bootstrap is None else conn.model_copy(update={"bootstrap_servers": bootstrap})


def as_connection(target: Target) -> KafkaConnection:
    """A connection, a bootstrap address (the security as `connection()` finds it) or None."""
    return target if isinstance(target, KafkaConnection) else connection(target)


def consumer(target: Target, *topic_names: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer; without a group unless `group_id` is given, never auto-committing."""
    options.setdefault("group_id", None)
    options.setdefault("enable_auto_commit", False)
    return AIOKafkaConsumer(*topic_names, **as_connection(target).client_kwargs(), **options)


def producer(target: Target, **options: Any) -> AIOKafkaProducer:
    """An idempotent producer (acks=all) that can send the largest message the pipeline carries."""
    options.setdefault("enable_idempotence", True)
    options.setdefault("acks", "all")
    options.setdefault("max_request_size", MAX_REQUEST_BYTES)
    return AIOKafkaProducer(**as_connection(target).client_kwargs(), **options)


def admin(target: Target, **options: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**as_connection(target).client_kwargs(), **options)


async def topic_partitions(target: Target, names: Iterable[str]) -> dict[str, list[int]]:
    """The partitions of each existing topic among `names`, asked of the cluster now (see
    shared.kafka_connection.describe_partitions)."""
    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    client = target if isinstance(target, AIOKafkaAdminClient) else admin(target)
    if client is not target:
        await client.start()
    try:
        return await describe_partitions(client, wanted)
    finally:
        if client is not target:
            await client.close()


async def read_topic(target: Target, topic: str, match: Callable[[Any], bool] = lambda r: True,
                     timeout: float = 20, partitions: list[int] | None = None) -> list:
    """Every record of `topic` now (from the beginning up to its current end) for which match(record).
    Raises ValueError when the topic does not exist, TimeoutError when its end is not reached in `timeout`."""
    conn = as_connection(target)
    if partitions is None:
        partitions = (await topic_partitions(conn, [topic])).get(topic, [])
    if not partitions:
        raise ValueError(f"topic {topic} does not exist")
    tps = [TopicPartition(topic, p) for p in partitions]
    c = consumer(conn)
    await c.start()
    found = []
    try:
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        end = await c.end_offsets(tps)
        deadline = time.monotonic() + timeout
        while True:
            positions = [await c.position(tp) for tp in end]
            if all(pos >= end[tp] for pos, tp in zip(positions, end)):
                break
            if time.monotonic() >= deadline:  # a partial read passed off as the whole topic would mislead
                behind = sum(end[tp] - pos for pos, tp in zip(positions, end))
                raise TimeoutError(f"{topic}: {behind} records not read within {timeout:.0f}s")
            for records in (await c.getmany(timeout_ms=300)).values():
                found += [r for r in records if match(r)]
    finally:
        await c.stop()
    return found


async def read_topics(target: Target, topic_names: Iterable[str], timeout: float = 20) -> list:
    """Every record now on these topics (missing topics are skipped), read in parallel."""
    conn = as_connection(target)
    names = list(topic_names)
    partitions = await topic_partitions(conn, names)
    batches = await asyncio.gather(*(read_topic(conn, t, timeout=timeout, partitions=partitions[t])
                                     for t in names if t in partitions))
    return [r for batch in batches for r in batch]


async def _assign_from(c: AIOKafkaConsumer, tps: list[TopicPartition], start_ms: int | None
                       ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """Assign `tps` to `c` and seek each to its beginning, or to its first record at or after `start_ms` (by
    timestamp; its end when it has none): the (start, end) offsets of what is to be read."""
    c.assign(tps)
    end = await c.end_offsets(tps)
    start = await c.beginning_offsets(tps)
    if start_ms is not None:
        found = await c.offsets_for_times({tp: start_ms for tp in tps})
        start = {tp: found[tp].offset if found.get(tp) is not None else end[tp] for tp in tps}
    for tp in tps:
        c.seek(tp, start[tp])
    return start, end


async def stream_topic(target: Target, topic: str, *, start_ms: int | None = None):
    """The records of `topic` from the beginning (or from the first at or after `start_ms`, by timestamp) up
    to its end when called, yielded a fetch at a time, each partition in offset order: for reading a whole
    year without holding it in memory."""
    conn = as_connection(target)
    partitions = (await topic_partitions(conn, [topic])).get(topic, [])
    if not partitions:
        raise ValueError(f"topic {topic} does not exist")
    tps = [TopicPartition(topic, p) for p in partitions]
    c = consumer(conn, max_partition_fetch_bytes=4 * 1024 * 1024)
    await c.start()
    try:
        start, end = await _assign_from(c, tps, start_ms)
        # The next offset to read, from the records themselves: done when every partition reached its end.
        next_offset = dict(start)
        while any(next_offset[tp] < end[tp] for tp in tps):
            left = [tp for tp in tps if next_offset[tp] < end[tp]]
            fetched = await c.getmany(*left, timeout_ms=1000)
            for tp, records in fetched.items():
                if records:
                    next_offset[tp] = records[-1].offset + 1
                records = [r for r in records if r.offset < end[tp]]
                if records:
                    yield records
    finally:
        await c.stop()


async def stream_in_time_order(target: Target, topic_names: Iterable[str], *, start_ms: int | None = None):
    """The records of several topics from the beginning (or from the first at or after `start_ms`) up to
    their ends when called, one at a time in record-timestamp order across every partition: a merge of the
    partitions, one fetch buffered per partition (the others paused). A reader that keeps a request's state
    only while the request is open then reads a year in the memory of the requests open at once."""
    import heapq
    from collections import deque

    conn = as_connection(target)
    names = list(topic_names)
    parts = await topic_partitions(conn, names)
    tps = [TopicPartition(t, p) for t in names for p in parts.get(t, ())]
    if not tps:
        return
    c = consumer(conn, max_partition_fetch_bytes=1024 * 1024)
    await c.start()
    try:
        start, end = await _assign_from(c, tps, start_ms)
        buffers: dict[TopicPartition, deque] = {tp: deque() for tp in tps}
        unread = {tp for tp in tps if start[tp] < end[tp]}  # records left to fetch
        heads: list[tuple[int, int, int, TopicPartition]] = []  # (timestamp, offset, order, partition)
        order = {tp: i for i, tp in enumerate(tps)}
        while unread or heads:
            # The smallest timestamp is known once every partition with records left has one buffered.
            while waiting := [tp for tp in unread if not buffers[tp]]:
                c.resume(*waiting)
                fetched = await c.getmany(*waiting, timeout_ms=1000)
                for tp, records in fetched.items():
                    if records and records[-1].offset + 1 >= end[tp]:
                        unread.discard(tp)
                    records = [r for r in records if r.offset < end[tp]]
                    if records:
                        if not buffers[tp]:
                            heapq.heappush(heads, (records[0].timestamp, records[0].offset, order[tp], tp))
                        buffers[tp].extend(records)
                        c.pause(tp)
            if not heads:
                break
            _, _, _, tp = heapq.heappop(heads)
            record = buffers[tp].popleft()
            if buffers[tp]:
                nxt = buffers[tp][0]
                heapq.heappush(heads, (nxt.timestamp, nxt.offset, order[tp], tp))
            yield record
    finally:
        await c.stop()
