"""The pipeline bench's phases: the plan of offered loads, the collector that notes when each request is
complete (from the output topics' record timestamps), and one phase run and measured (throughput, latency
percentiles, hops, CPU and RSS)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import orjson
import psutil
from aiokafka.structs import TopicPartition

from cancelflow import kafka_clients
from load import drive
from mail_arrival import MailArrivals
from sampling import Monitor


NOTIFICATIONS_PER_REQUEST = 3


@dataclass
class Plan:
    rates: list[int]
    duration: float
    burst: int
    baseline_rates: list[int]
    profile_s: float
    timeout: float


def plan_from(args) -> Plan:
    if args.quick:
        plan = Plan(rates=[25, 50, 100, 200, 400], duration=4, burst=2000, baseline_rates=[100, 400], profile_s=8,
                    timeout=40)
    else:
        plan = Plan(rates=[25, 50, 100, 200, 400, 800], duration=10, burst=8000,
                    baseline_rates=[25, 50, 100, 200, 400, 800], profile_s=20, timeout=120)
    if args.rates:
        plan.rates = [int(r) for r in args.rates.split(",")]
        plan.baseline_rates = [r for r in plan.baseline_rates if r in plan.rates] or plan.rates[:1]
    if args.duration:
        plan.duration = args.duration
    if args.burst is not None:
        plan.burst = args.burst
    return plan


@dataclass
class Collector:
    """Reads the output topics from their current end and notes when each request is complete."""

    bootstrap: str
    topics: tuple[str, ...]
    done: dict[str, float] = field(default_factory=dict)          # request key -> completion (epoch s)
    requested_at: dict[str, float] = field(default_factory=dict)  # request key -> cancellation.requested
    key_of: dict[str, str] = field(default_factory=dict)          # submission id -> request key
    seen: dict[str, list] = field(default_factory=lambda: defaultdict(list))
    stages: dict[str, dict] = field(default_factory=lambda: defaultdict(dict))  # request -> stage -> Kafka ts
    kinds: Counter = field(default_factory=Counter)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        # Latencies come from the records' own timestamps, so the collector may read lazily: fewer, larger
        # fetches keep its load on the broker (which the measured pipeline shares) small.
        consumer = kafka_clients.consumer(self.bootstrap, fetch_max_wait_ms=200, fetch_min_bytes=256 * 1024,
                                          max_partition_fetch_bytes=4 * 1024 * 1024)
        await consumer.start()
        try:
            parts = await kafka_clients.topic_partitions(self.bootstrap, self.topics)
            tps = [TopicPartition(t, p) for t in self.topics for p in parts.get(t, ())]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)
            self.ready.set()
            while True:
                batches = await consumer.getmany(timeout_ms=100, max_records=5000)
                for records in batches.values():
                    for r in records:
                        self.on_record(r)
                if batches:
                    self.changed.set()
        finally:
            await consumer.stop()

    def on_record(self, r) -> None:
        obj = orjson.loads(r.value)
        if "event_type" not in obj:  # the bare relay's messages
            key = obj["sid"]
            self.seen[key].append(r.timestamp / 1000)
            if len(self.seen[key]) == NOTIFICATIONS_PER_REQUEST:
                self.done[key] = max(self.seen[key])
            return
        data = obj["data"]
        et = obj["event_type"]
        if et in ("cancellation.requested", "cancellation.accepted", "settlement.issued"):
            self.stages[data["request_id"]].setdefault(et, r.timestamp / 1000)
        if et == "cancellation.requested":
            if data.get("submission_id"):
                self.key_of[data["submission_id"]] = data["request_id"]
                self.requested_at[data["request_id"]] = datetime.fromisoformat(obj["occurred_at"]).timestamp()
        elif et == "notification.sent":
            rid = data["request_id"]
            self.kinds[data["kind"]] += 1
            self.seen[rid].append(r.timestamp / 1000)
            if len(self.seen[rid]) == NOTIFICATIONS_PER_REQUEST or data["kind"] == "rejection":
                self.done[rid] = max(self.seen[rid])

    def completed(self, sid: str) -> float | None:
        return self.done.get(self.key_of.get(sid, sid))


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the report's nearest-rank method; NaN when there are no values."""
    from cancelflow.report import nearest_rank

    found = nearest_rank(sorted(values), q / 100)
    return float("nan") if found is None else found


async def run_phase(name: str, *, rate: float | None, messages, producer, topic: str, collector: Collector,
                    monitor: Monitor, timeout: float, mail: MailArrivals | None = None) -> dict:
    monitor.phase_peak.clear()
    cpu0 = monitor.cpu()
    wall0 = time.monotonic()
    machine0 = psutil.cpu_times()
    sent = await drive(producer, topic, messages, rate)
    deadline = time.monotonic() + timeout
    pending = set(sent)
    while pending and time.monotonic() < deadline:
        pending = {sid for sid in pending if collector.completed(sid) is None}
        if pending:
            collector.changed.clear()
            try:
                await asyncio.wait_for(collector.changed.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
    cpu1 = monitor.cpu()
    wall = time.monotonic() - wall0
    machine1 = psutil.cpu_times()
    busy = (lambda t: t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0))
    e2e, from_requested, ends, delivered = [], [], [], []
    if mail is not None:
        mail.scan()
    hops: dict[str, list[float]] = defaultdict(list)
    for sid, t0 in sent.items():
        t1 = collector.completed(sid)
        if t1 is None:
            continue
        ends.append(t1)
        e2e.append((t1 - t0) * 1000)
        rid = collector.key_of.get(sid)
        if mail is not None and (t_mail := mail.last(rid, NOTIFICATIONS_PER_REQUEST)) is not None:
            delivered.append((t_mail - t0) * 1000)
        if rid in collector.requested_at:
            from_requested.append((t1 - collector.requested_at[rid]) * 1000)
        st = collector.stages.get(rid)
        if st and len(st) == 3:
            marks = [("submitted", t0), ("requested", st["cancellation.requested"]),
                     ("accepted", st["cancellation.accepted"]), ("settled", st["settlement.issued"]),
                     ("notified", t1)]
            for (a, ta), (b, tb) in zip(marks, marks[1:]):
                hops[f"{a}->{b}"].append((tb - ta) * 1000)
    first = min(sent.values())
    n_done = len(ends)
    span = (max(ends) - first) if ends else float("nan")
    completing = (max(ends) - min(ends)) if n_done > 1 else float("nan")
    result = {
        "phase": name, "offered": rate, "requests": len(sent), "completed": n_done,
        # The rate at which requests completed, from the first completion to the last: the pipeline's own
        # pace (for a fixed rate, the offered rate if it keeps up; for the burst, its capacity). Valid
        # too when a phase timed out unfinished (completions so far).
        "throughput": (n_done - 1) / completing if n_done > 1 and completing > 0 else 0.0,
        "throughput_from_first_send": n_done / span if ends and span > 0 else 0.0,
        "span_s": span,
        "e2e_ms": {f"p{q}": pct(e2e, q) for q in (50, 95, 99)} | {"max": max(e2e) if e2e else float("nan")},
        "requested_ms": {f"p{q}": pct(from_requested, q) for q in (50, 95, 99)},
        # To the last mail's arrival at the sink: the same end point in every version of the code.
        "delivered_ms": {f"p{q}": pct(delivered, q) for q in (50, 95, 99)} | {"n": len(delivered)},
        "hops_p50_ms": {k: round(pct(v, 50), 1) for k, v in hops.items()},
        "hops_p99_ms": {k: round(pct(v, 99), 1) for k, v in hops.items()},
        "cpu_s_per_1k": {k: (cpu1[k] - cpu0.get(k, 0.0)) * 1000 / max(n_done, 1) for k in cpu1},
        "cpu_cores": {k: round((cpu1[k] - cpu0.get(k, 0.0)) / max(wall, 1e-9), 2) for k in cpu1},
        # Everything on the machine, other people's work included: how close to the 2 cores it ran.
        "machine_busy_cores": round((busy(machine1) - busy(machine0)) / max(wall, 1e-9), 2),
        "peak_rss_mb": {k: v / 2**20 for k, v in monitor.phase_peak.items()},
    }
    result["saturated"] = bool(rate) and (result["throughput"] < 0.95 * rate or n_done < len(sent))
    tp = result["throughput"]
    print(f"  {name:>10}: {n_done}/{len(sent)} done, {tp:8.1f} req/s, e2e p50 {result['e2e_ms']['p50']:8.1f} ms,"
          f" p95 {result['e2e_ms']['p95']:8.1f} ms, p99 {result['e2e_ms']['p99']:8.1f} ms", flush=True)
    print("              CPU (cores busy): " + ", ".join(
        f"{k} {v:.2f}" for k, v in sorted(result["cpu_cores"].items(), key=lambda kv: -kv[1]) if v >= 0.01)
        + f"; total {sum(result['cpu_cores'].values()):.2f}; whole machine {result['machine_busy_cores']:.2f}"
        + f" of {psutil.cpu_count()}", flush=True)
    if delivered:
        d = result["delivered_ms"]
        print(f"              mail at the sink: p50 {d['p50']:8.1f} ms, p95 {d['p95']:8.1f} ms,"
              f" p99 {d['p99']:8.1f} ms ({d['n']} requests)", flush=True)
    if hops:
        print("              hops p50 (ms): " + ", ".join(f"{k} {v}" for k, v in result["hops_p50_ms"].items()),
              flush=True)
    return result
