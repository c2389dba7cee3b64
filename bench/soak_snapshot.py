"""What the soak records at each tenth's end, while the load goes on: each service's RSS and CPU seconds,
each consumer group's lag, the rows of every table of every service and the scheduled work's states, the
database's bytes and each topic's bytes."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import asyncpg
import psutil

from cancelflow import kafka_clients
from shared.vocabulary import SERVICES


def rss_mib(pid: int) -> float:
    try:
        proc = psutil.Process(pid)
        return round(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20, 1)
    except psutil.Error:
        return float("nan")


def topic_bytes(root: Path) -> dict[str, int]:
    """Bytes of each topic's records (the .log segments of all partitions; the index files are preallocated)."""
    out: dict[str, int] = {}
    for d in (root / "kafka" / "log").glob("*-*"):
        topic = d.name.rsplit("-", 1)[0]
        if topic.startswith("__") or not d.is_dir():
            continue
        out[topic] = out.get(topic, 0) + sum(f.stat().st_size for f in d.glob("*.log"))
    return dict(sorted(out.items()))


def cpu_s(pid: int) -> float:
    try:
        proc = psutil.Process(pid)
        return round(sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)]), 1)
    except psutil.Error:
        return float("nan")


async def lag(bootstrap: str) -> dict[str, int]:
    """Each service's consumer group: records on its topics not yet committed (where a backlog sits)."""
    admin = kafka_clients.admin(bootstrap)
    probe = kafka_clients.consumer(bootstrap)
    await admin.start()
    await probe.start()
    try:
        out = {}
        for group in SERVICES:
            committed = await admin.list_consumer_group_offsets(group)
            tps = [tp for tp, meta in committed.items() if meta.offset >= 0]
            ends = await probe.end_offsets(tps) if tps else {}
            out[group] = sum(max(ends[tp] - committed[tp].offset, 0) for tp in tps)
        return out
    finally:
        await probe.stop()
        await admin.close()


async def table_rows(url: str, now: datetime) -> tuple[dict[str, int], int, dict[str, int]]:
    """Rows of every table of every service, the database's bytes, and how many rows of the scheduled work
    are in which state (reminders pending/sent, cancellations completed)."""
    conn = await asyncpg.connect(url)
    try:
        rows = {}
        for r in await conn.fetch("SELECT table_schema, table_name FROM information_schema.tables"
                                  " WHERE table_schema = ANY($1::text[]) AND table_type = 'BASE TABLE'"
                                  " ORDER BY 1, 2", list(SERVICES)):
            rows[f"{r[0]}.{r[1]}"] = await conn.fetchval(f'SELECT count(*) FROM "{r[0]}"."{r[1]}"')
        states = {f"notifications {'reminder' if r[0] else 'immediate'} {r[1]}": r[2] for r in await conn.fetch(
            "SELECT days_before IS NOT NULL, status, count(*) FROM notifier.notifications GROUP BY 1, 2")}
        states["notifications due, not sent"] = await conn.fetchval(
            "SELECT count(*) FROM notifier.notifications WHERE status = 'pending' AND due_at <= $1", now)
        states |= {f"cancellations {r[0]}": r[1] for r in await conn.fetch(
            "SELECT status, count(*) FROM eligibility.cancellations GROUP BY 1")}
        return rows, await conn.fetchval("SELECT pg_database_size(current_database())"), dict(sorted(states.items()))
    finally:
        await conn.close()


async def snapshot(stack, root: Path, clock, collector, label: str, t_run: float) -> dict:
    rows, db_bytes, states = await table_rows(stack.database_url, clock.now())
    return {"at": label, "clock": clock.now().isoformat(timespec="seconds"), "wall": time.time(),
            "elapsed_s": round(time.monotonic() - t_run, 1), "load": round(os.getloadavg()[0], 1),
            "rss_mib": {n: rss_mib(stack.procs[n].pid) for n in (*SERVICES, "kafka", "postgres")},
            "cpu_s": {n: cpu_s(stack.procs[n].pid) for n in (*SERVICES, "kafka", "postgres")},
            "lag": await lag(stack.bootstrap), "rows": rows, "states": states, "db_bytes": db_bytes, "topic_bytes": topic_bytes(root),
            "mails": dict(collector.kinds)}
