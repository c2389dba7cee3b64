"""`cancelflow top`: per topic end offsets and rate, per service's consumer group the lag, DLQ counts."""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import typer
from rich.console import Group
from rich.table import Table

from shared import topics
from shared.kafka_connection import KafkaConnection

from .. import kafka_clients
from ..kafka_clients import Target
from .base import BOOTSTRAP, app, connection, console, run


def service_topics() -> dict[str, tuple[str, ...]]:
    """The topics each service consumes, from its handlers module."""
    from ..asyncapi import service_subscriptions

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

    def __init__(self, target: Target, groups: Sequence[str]) -> None:
        self.groups = tuple(groups)
        self.consumer = kafka_clients.consumer(target)
        self.admin = kafka_clients.admin(target)

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

        partitions = await kafka_clients.topic_partitions(self.admin, topics.all_with_dlq())
        tps = [TopicPartition(t, p) for t, ps in partitions.items() for p in ps]
        begin = await self.consumer.beginning_offsets(tps) if tps else {}
        end = await self.consumer.end_offsets(tps) if tps else {}
        committed = {}
        for group in self.groups:
            offsets = await self.admin.list_consumer_group_offsets(group)
            committed[group] = {(tp.topic, tp.partition): m.offset for tp, m in offsets.items() if m.offset >= 0}
        return Snapshot(time.monotonic(), {(tp.topic, tp.partition): o for tp, o in begin.items()},
                        {(tp.topic, tp.partition): o for tp, o in end.items()}, committed)


async def top_once(target: Target, interval: float = 1.0) -> TopView:
    subs = service_topics()
    groups = {s: consumer_group(s) for s in subs}
    async with Sampler(target, list(groups.values())) as sampler:
        first = await sampler.take()
        await asyncio.sleep(interval)
        return top_view(first, await sampler.take(), subs, groups)


async def _top_live(conn: KafkaConnection, interval: float) -> None:
    from rich.live import Live

    subs = service_topics()
    groups = {s: consumer_group(s) for s in subs}
    where = conn.bootstrap_servers
    async with Sampler(conn, list(groups.values())) as sampler:
        prev = await sampler.take()
        with Live(top_renderable(top_view(None, prev, subs, groups), where), console=console,
                  refresh_per_second=4, screen=False, vertical_overflow="visible") as live:
            while True:
                await asyncio.sleep(interval)
                cur = await sampler.take()
                live.update(top_renderable(top_view(prev, cur, subs, groups), where))
                prev = cur


@app.command()
def top(once: bool = typer.Option(False, "--once", help="Print one frame and exit."),
        interval: float = typer.Option(1.0, "--interval", min=0.05, help="Seconds between refreshes."),
        bootstrap: str = BOOTSTRAP) -> None:
    """A live view: per topic end offsets and rate, per service's consumer group the lag, DLQ counts."""
    conn = connection(bootstrap)
    if once:
        console.print(top_renderable(run(top_once(conn, interval)), conn.bootstrap_servers))
        return
    run(_top_live(conn, interval))
