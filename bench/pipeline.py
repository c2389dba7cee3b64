#!/usr/bin/env python
"""The pipeline benchmark: the four services end to end, and a bare Kafka relay beside them.

    .venv/bin/python bench/pipeline.py            # full run, about 4-5 min
    .venv/bin/python bench/pipeline.py --quick    # 1-3 min: fewer, shorter phases
    .venv/bin/python bench/pipeline.py --profile  # and py-spy on every service during the burst

It is a command, not a test: it starts its own local stack (Kafka, PostgreSQL, the SMTP sink and the
four services, exactly as `cancelflow up` does) in a temporary directory on free loopback ports, and
stops it at the end. Nothing else on the machine is touched.

What is measured
- Requests go in through Kafka: one `cancellation.submitted` per request on `cancellation.submissions`,
  each for its own contract (signed beforehand, old enough to be accepted), so every request is accepted
  and ends with three e-mails (acknowledgement + data-export and rich-menu reminders) and three
  `notification.sent` events.
- Open-loop load: for each offered rate the submissions are sent on a fixed schedule for `--duration`
  seconds whatever the pipeline does; a rate it does not keep up with stops the ladder (higher rates only
  grow the queue); then a burst ("full speed") of `--burst` submissions at once. Every phase ends by
  itself: when all its requests completed, or after a timeout.
- Latency of a request: from the moment the bench sent its submission to the Kafka record timestamp of
  its LAST `notification.sent` (e2e), and from `cancellation.requested`'s `occurred_at` (intake's commit)
  to the same point (the SPEC's "requested -> notified"). Same host, same clock.
- Throughput of a phase: completions per second from the first completion to the last (for the burst:
  the pipeline's capacity). A phase below 95 % of the offered rate, or unfinished, is "saturated".
- Peak RSS (psutil) of each service process, and the CPU seconds each process spent per phase (and the
  whole machine's: it is shared, see the calibration figure in the results).
- The baseline: a bare aiokafka relay with the same hops (submissions -> requests -> decisions ->
  settlements -> notifications, one process per hop, consume -> produce with acks=all and an idempotent
  producer, offsets committed after the produce is acknowledged, no database), the same partitions and
  message sizes as the pipeline's events, the same fan-out of three at the last hop, on the same broker,
  driven by the same load, run first on a quiet broker.
- `--profile`: py-spy samples every service during the burst; raw stacks in bench/results/profile-<label>/,
  the top frames in the results file.

Results: a table on stdout, bench/results/<label>.json, and the plot docs/performance.png
(`--compare bench/reference/before.json` overlays an earlier run; `--plot-only FILE...` redraws).
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
import psutil  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402

from cancelflow import kafka_clients  # noqa: E402 - the project's one Kafka client factory

RELAY_TOPICS = ("bench.relay.submissions", "bench.relay.requests", "bench.relay.decisions",
                "bench.relay.settlements", "bench.relay.notifications")
NOTIFICATIONS_PER_REQUEST = 3
START_DATE = date(2020, 1, 31)  # first anniversary long past: every request is accepted


# --- the messages -----------------------------------------------------------------------------------

def customer(n: int) -> dict:
    return {"name": f"山田 太郎 {n}", "email": f"taro.{n}@example.jp", "phone": f"090-1234-{n % 10000:04d}"}


def form(contract_id: str, n: int) -> dict:
    return {"contract_id": contract_id, "account_id": "@" + contract_id.lower(), "customer": customer(n),
            "plan": "standard", "reason": "SWITCHING_TOOL", "feedback": "ベンチマーク"}


def submission(contract_id: str, n: int) -> tuple[str, bytes]:
    from shared.events import CancellationSubmitted, new_envelope

    sid = f"S-{uuid.uuid4().hex[:16]}"
    env = new_envelope(CancellationSubmitted(**form(contract_id, n), submission_id=sid), producer="bench",
                       correlation_id=sid, causation_id=None)
    return sid, env.to_bytes()


def pipeline_message_sizes() -> list[int]:
    """Bytes of each hop's event as the pipeline writes it: submitted, requested, accepted, settlement, sent."""
    from shared.events import (CancellationAccepted, CancellationRequested, ChargeLine, NotificationSent,
                               SettlementIssued, new_envelope)
    from shared.vocabulary import NotificationKind, Offer

    now = datetime.now(timezone.utc)
    rid, cid = str(uuid.uuid4()), "C-" + uuid.uuid4().hex[:12]
    events = [
        CancellationRequested(**form(cid, 1), request_id=rid, source="kafka", submission_id="S-" + uuid.uuid4().hex[:16],
                              received_at=now, received_on=now.date()),
        CancellationAccepted(request_id=rid, contract_id=cid, effective_date=now.date() + timedelta(days=45),
                             first_anniversary=START_DATE.replace(year=2021), offers=(Offer.consultation, Offer.discount),
                             received_on=now.date(), reason="SWITCHING_TOOL", decided_at=now),
        SettlementIssued(request_id=rid, contract_id=cid, charges=(
            ChargeLine(billing_date=now.date(), amount_jpy=10_000),
            ChargeLine(billing_date=now.date() + timedelta(days=30), amount_jpy=10_000)),
            total_jpy=20_000, paid_through=now.date() + timedelta(days=60)),
        NotificationSent(request_id=rid, kind=NotificationKind.acknowledgement, recipient="t***@example.jp",
                         sent_at=now, due_at=now),
    ]
    sizes = [len(submission(cid, 1)[1])]
    sizes += [len(new_envelope(e, producer="svc", correlation_id=rid, causation_id=str(uuid.uuid4())).to_bytes())
              for e in events]
    return sizes


# --- process monitoring -----------------------------------------------------------------------------

class Monitor:
    """Peak RSS and CPU seconds of the processes that matter, sampled in the background."""

    def __init__(self) -> None:
        self.procs: dict[str, psutil.Process] = {}
        self.peak_rss: dict[str, int] = defaultdict(int)
        self.phase_peak: dict[str, int] = defaultdict(int)
        self._task: asyncio.Task | None = None

    def watch(self, name: str, pid: int) -> None:
        try:
            self.procs[name] = psutil.Process(pid)
        except psutil.Error:
            pass

    def unwatch(self, name: str) -> None:
        self.procs.pop(name, None)

    @staticmethod
    def _tree(proc: psutil.Process) -> list[psutil.Process]:
        try:
            return [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) of each process, with its children (reaped ones included);
        the bench itself without its children (the stack's processes are its children)."""
        out = {}
        for name, proc in self.procs.items():
            total = 0.0
            for p in ([proc] if name == "bench" else self._tree(proc)):
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                    if name != "bench":
                        total += t.children_user + t.children_system
                except psutil.Error:
                    pass
            out[name] = total
        return out

    def sample(self) -> None:
        for name, proc in self.procs.items():
            if name in ("kafka", "postgres", "bench"):
                procs = [proc]  # PostgreSQL's backends share memory: the sum would overcount
            else:
                procs = self._tree(proc)
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak_rss[name] = max(self.peak_rss[name], rss)
            self.phase_peak[name] = max(self.phase_peak[name], rss)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.25)

    def start(self) -> None:
        self._task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# --- collecting completions -------------------------------------------------------------------------

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


# --- driving load -----------------------------------------------------------------------------------

async def drive(producer: AIOKafkaProducer, topic: str, messages: list[tuple[str, bytes, bytes]],
                rate: float | None) -> dict[str, float]:
    """Send (sid, key, value) on an open-loop schedule (`rate` per second) or all at once; sid -> sent at."""
    sent: dict[str, float] = {}
    futures = []
    start = time.monotonic()
    for i, (sid, key, value) in enumerate(messages):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0.001:
                await asyncio.sleep(delay)
        sent[sid] = time.time()
        futures.append(await producer.send(topic, value, key=key))
    await asyncio.gather(*futures)
    return sent


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the report's nearest-rank method; NaN when there are no values."""
    from cancelflow.report import nearest_rank

    found = nearest_rank(sorted(values), q / 100)
    return float("nan") if found is None else found


async def run_phase(name: str, *, rate: float | None, messages, producer, topic: str, collector: Collector,
                    monitor: Monitor, timeout: float) -> dict:
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
    e2e, from_requested, ends = [], [], []
    hops: dict[str, list[float]] = defaultdict(list)
    for sid, t0 in sent.items():
        t1 = collector.completed(sid)
        if t1 is None:
            continue
        ends.append(t1)
        e2e.append((t1 - t0) * 1000)
        rid = collector.key_of.get(sid)
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
    if hops:
        print("              hops p50 (ms): " + ", ".join(f"{k} {v}" for k, v in result["hops_p50_ms"].items()),
              flush=True)
    return result


# --- the bare relay (baseline) ----------------------------------------------------------------------

async def relay_hop(bootstrap: str, src: str, dst: str, group: str, size: int, fanout: int) -> None:
    """consume -> produce, offsets committed once the produced records are acknowledged; no database."""
    consumer = kafka_clients.consumer(bootstrap, src, group_id=group,
                                      auto_offset_reset="earliest", max_poll_records=500)
    producer = kafka_clients.producer(bootstrap, linger_ms=2)
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=100)
    print("ready", flush=True)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=50, max_records=500)
            futures = []
            for records in batches.values():
                for r in records:
                    obj = orjson.loads(r.value)
                    out = {"sid": obj["sid"], "hop": dst, "n": 0, "pad": ""}
                    pad = max(size - len(orjson.dumps(out)), 0)
                    for n in range(fanout):
                        out["n"], out["pad"] = n, "x" * pad
                        futures.append(await producer.send(dst, orjson.dumps(out), key=r.key))
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def relay_messages(n: int, sizes: list[int]) -> list[tuple[str, bytes, bytes]]:
    out = []
    for _ in range(n):
        sid = uuid.uuid4().hex
        body = {"sid": sid, "pad": ""}
        body["pad"] = "x" * max(sizes[0] - len(orjson.dumps(body)), 0)
        out.append((sid, ("C-" + sid[:12]).encode(), orjson.dumps(body)))
    return out


# --- the whole run ----------------------------------------------------------------------------------

@dataclass
class Plan:
    rates: list[int]
    duration: float
    burst: int
    baseline_rates: list[int]
    profile_s: float
    timeout: float


def calibrate() -> float:
    """Milliseconds a fixed piece of pure Python takes here and now: the machine is shared, so its speed
    varies from run to run; this number says how fast it was (lower is faster)."""
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        total = 0
        for i in range(300_000):
            total += i * i % 7
        best = min(best, time.perf_counter() - t)
    return round(best * 1000, 1)


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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


async def sign_contracts(bootstrap: str, contract_ids: list[str]) -> None:
    from shared import topics
    from shared.events import ContractSigned, new_envelope

    producer = kafka_clients.producer(bootstrap, linger_ms=5)
    admin = kafka_clients.admin(bootstrap)
    await producer.start()
    await admin.start()
    try:
        futures = []
        for cid in contract_ids:
            env = new_envelope(ContractSigned(contract_id=cid, account_id="@" + cid.lower(), plan="standard",
                                              monthly_fee_jpy=10_000, start_date=START_DATE),
                               producer="bench", correlation_id=cid, causation_id=None)
            futures.append(await producer.send(topics.CONTRACTS, env.to_bytes(), key=cid.encode()))
        metas = await asyncio.gather(*futures)
        last: dict[TopicPartition, int] = {}
        for m in metas:
            tp = TopicPartition(m.topic, m.partition)
            last[tp] = max(last.get(tp, -1), m.offset)
        deadline = time.monotonic() + 300
        for group in ("eligibility", "billing"):
            while True:
                committed = await admin.list_consumer_group_offsets(group, partitions=list(last))
                if all(committed.get(tp) is not None and committed[tp].offset > off for tp, off in last.items()):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{group} did not consume the contracts")
                await asyncio.sleep(0.2)
    finally:
        await admin.close()
        await producer.stop()


async def start_profilers(stack, seconds: float, out_dir: Path) -> list[subprocess.Popen]:
    from cancelflow.stack import SERVICES

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("  (py-spy not found: `.venv/bin/pip install py-spy`; profiling skipped)")
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for name in SERVICES:
        procs.append(subprocess.Popen(
            [py_spy, "record", "--pid", str(stack.procs[name].pid), "--duration", str(int(seconds)), "--rate", "97",
             "--nonblocking", "--format", "raw", "--output", str(out_dir / f"{name}.raw")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


async def finish_profilers(procs: list[subprocess.Popen], seconds: float, name: str) -> dict:
    from cancelflow.stack import SERVICES

    for p in procs:
        try:
            await asyncio.to_thread(p.wait, timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            p.kill()
    out = REPO / "bench" / "results" / name
    return {svc: summarize_profile(out / f"{svc}.raw") for svc in SERVICES if (out / f"{svc}.raw").exists()}


IDLE_FRAMES = ("EpollSelector.select", "select (selectors.py")


def summarize_profile(raw: Path, top: int = 15) -> dict:
    """From py-spy's raw (collapsed) stacks: the share of samples the process was busy; of the busy
    samples, the own time per function, the own time per library (the innermost frame's), and the share
    spent under each of the project's modules (inclusive)."""
    own: Counter = Counter()
    own_area: Counter = Counter()
    through: Counter = Counter()
    total = busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        leaf = frames[-1]
        if leaf.startswith(IDLE_FRAMES) or "Condition.wait" in leaf or "_worker (concurrent/futures" in leaf:
            continue  # waiting for I/O, or an idle helper thread
        busy += n
        own[leaf] += n
        own_area[_area(leaf) or "other"] += n
        for label in {PROJECT_MODULES[m] for f in frames for m in PROJECT_MODULES if m in f}:
            through[label] += n  # once per label, however many of its modules the stack passes

    def share(counter: Counter, k: int | None = None) -> list:
        return [(f, round(100 * n / busy, 1)) for f, n in counter.most_common(k)] if busy else []

    return {"samples": total, "busy_pct": round(100 * busy / total, 1) if total else 0.0,
            "own": share(own, top), "own_by_library": share(own_area), "under": share(through)}


PROJECT_MODULES = {"(shared/messaging/consumer.py": "shared.messaging (consumer)",
                   "(shared/messaging/deferral.py": "shared.messaging (consumer)",
                   "(shared/messaging/inbox.py": "shared.messaging (consumer)",
                   "(shared/messaging/outbox.py": "shared.messaging (outbox + relay)",
                   "(shared/messaging/relay.py": "shared.messaging (outbox + relay)",
                   "(shared/events.py": "shared.events (decode/encode)",
                   **{f"(services/{s}/{m}.py": "service handlers and stores"
                      for s in ("intake", "eligibility", "billing", "notifier") for m in ("handlers", "store", "domain")},
                   **{f"(services/notifier/{m}.py": "notifier dispatch" for m in ("dispatch", "smtp_client", "mime")},
                   "(services/notifier/texts.py": "notifier mail texts", "(services/notifier/templates/": "notifier mail texts"}


def _area(frame: str) -> str | None:
    for marker, area in (("_SelectorSocketTransport.write", "socket send (syscall)"),
                         ("asyncpg/", "asyncpg"), ("aiokafka/", "aiokafka"), ("faststream/", "faststream"),
                         ("pydantic", "pydantic"), ("aiosmtplib/", "aiosmtplib"), ("(email/", "email (stdlib)"),
                         ("jinja2/", "jinja2"), ("(logging/", "logging"), ("prometheus_client/", "prometheus"), ("(asyncio/", "asyncio"),
                         ("(shared/", "project code"), ("(services/", "project code"), ("uuid", "uuid")):
        if marker in frame:
            return area
    return None


async def run_baseline(bootstrap: str, plan: Plan, sizes: list[int], producer: AIOKafkaProducer, monitor: Monitor,
                       results: dict) -> None:
    """The bare relay: one process per hop, driven by the same schedule as the pipeline."""
    hops: list[subprocess.Popen] = []
    ctask = None
    try:
        for i, (src, dst) in enumerate(zip(RELAY_TOPICS, RELAY_TOPICS[1:])):
            fanout = NOTIFICATIONS_PER_REQUEST if dst == RELAY_TOPICS[-1] else 1
            hops.append(subprocess.Popen(
                [sys.executable, __file__, "--relay-hop", bootstrap, src, dst, f"bench-relay-{i}",
                 str(sizes[i + 1]), str(fanout)], stdout=subprocess.PIPE, cwd=REPO))
            monitor.watch(f"relay-hop-{i}", hops[-1].pid)
        for hop in hops:
            if hop.stdout.readline().strip() != b"ready":
                raise RuntimeError("a relay hop did not start")
        collector = Collector(bootstrap, (RELAY_TOPICS[-1],))
        ctask = asyncio.create_task(collector.run())
        await collector.ready.wait()
        await run_phase("warm-up", rate=200, messages=relay_messages(200, sizes), producer=producer,
                        topic=RELAY_TOPICS[0], collector=collector, monitor=monitor, timeout=30)
        for rate in plan.baseline_rates:
            msgs = relay_messages(int(rate * plan.duration), sizes)
            results["baseline"].append(await run_phase(
                f"{rate}/s", rate=rate, messages=msgs, producer=producer, topic=RELAY_TOPICS[0],
                collector=collector, monitor=monitor, timeout=plan.timeout))
        if plan.burst:
            results["baseline"].append(await run_phase(
                "full speed", rate=None, messages=relay_messages(plan.burst, sizes), producer=producer,
                topic=RELAY_TOPICS[0], collector=collector, monitor=monitor, timeout=plan.timeout))
        results["baseline_peak_rss_mb"] = {k: round(v / 2**20, 1) for k, v in monitor.peak_rss.items()
                                           if k.startswith("relay")}
    finally:
        if ctask is not None:
            ctask.cancel()
            await asyncio.gather(ctask, return_exceptions=True)
        for i, hop in enumerate(hops):
            hop.terminate()
            monitor.unwatch(f"relay-hop-{i}")
        for hop in hops:
            try:
                hop.wait(timeout=10)
            except subprocess.TimeoutExpired:
                hop.kill()
                hop.wait(timeout=10)


async def run(args) -> dict:
    from cancelflow.infra import kafka
    from cancelflow.infra.ports import free_port
    from cancelflow.stack import SERVICES, Ports, Stack, StackConfig
    from shared import topics

    plan = plan_from(args)
    root = Path(tempfile.mkdtemp(prefix="cancelflow-bench-"))
    ports = Ports(*(free_port() for _ in range(8)))
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    stack = Stack(StackConfig(root=root, ports=ports, partitions=args.partitions, extra_env=extra_env))
    monitor = Monitor()
    results: dict = {"label": args.label, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "machine": {"cpus": psutil.cpu_count(), "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
                                 "load_before": os.getloadavg(), "calibration_ms": calibrate()},
                     "code": git_state(),
                     "plan": plan.__dict__, "partitions": args.partitions, "env": extra_env,
                     "pipeline": [], "baseline": []}
    sizes = pipeline_message_sizes()
    results["message_sizes"] = sizes
    t_start = time.monotonic()
    try:
        print(f"starting Kafka + PostgreSQL + SMTP sink in {root} ...", flush=True)
        try:
            await asyncio.to_thread(stack.start_infra)
        except Exception as exc:  # noqa: BLE001 - e.g. a random KRaft cluster id starting with "-": once more
            print(f"  infrastructure did not start ({exc}); once more on a fresh directory", flush=True)
            await asyncio.to_thread(stack.down)
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir(parents=True)
            stack = Stack(StackConfig(root=root, ports=Ports(*(free_port() for _ in range(8))),
                                      partitions=args.partitions, extra_env=extra_env))
            await asyncio.to_thread(stack.start_infra)
        monitor.watch("kafka", stack.procs["kafka"].pid)
        monitor.watch("postgres", stack.procs["postgres"].pid)
        monitor.watch("smtp", stack.procs["smtp"].pid)
        monitor.watch("bench", os.getpid())
        monitor.start()
        bootstrap = stack.bootstrap

        producer = kafka_clients.producer(bootstrap, linger_ms=2)
        await producer.start()
        try:
            # --- the baseline first, on a quiet broker --------------------------------------------
            if not args.no_baseline:
                print(f"baseline: bare relay, {len(RELAY_TOPICS) - 1} hops, sizes {sizes} bytes", flush=True)
                await kafka.create_topics(bootstrap, RELAY_TOPICS, args.partitions)
                await run_baseline(bootstrap, plan, sizes, producer, monitor, results)

            # --- the pipeline -----------------------------------------------------------------------
            print("starting the four services ...", flush=True)
            for name in SERVICES:
                stack.start_service(name)
            await asyncio.to_thread(stack.wait_healthy, list(SERVICES))
            for name in SERVICES:
                monitor.watch(name, stack.procs[name].pid)
            monitor.peak_rss.clear()

            warmup = 100
            total = warmup + sum(int(r * plan.duration) for r in plan.rates) + plan.burst
            contracts = [f"C-B{i:06d}-{uuid.uuid4().hex[:6]}" for i in range(total)]
            t = time.monotonic()
            await sign_contracts(bootstrap, contracts)
            print(f"signed {total} contracts in {time.monotonic() - t:.1f} s", flush=True)
            pool = iter(enumerate(contracts))

            def take(n: int) -> list[tuple[str, bytes, bytes]]:
                out = []
                for _ in range(n):
                    i, cid = next(pool)
                    sid, value = submission(cid, i)
                    out.append((sid, cid.encode(), value))
                return out

            collector = Collector(bootstrap, (topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS))
            ctask = asyncio.create_task(collector.run())
            await collector.ready.wait()
            print("pipeline: submissions over Kafka (cancellation.submissions)", flush=True)
            await run_phase("warm-up", rate=50, messages=take(warmup), producer=producer, topic=topics.SUBMISSIONS,
                            collector=collector, monitor=monitor, timeout=60)
            for rate in plan.rates:
                if results["pipeline"] and results["pipeline"][-1]["saturated"]:
                    # Beyond a rate the pipeline did not keep up with, a higher one only grows the queue.
                    print(f"  {rate}/s: skipped (saturated at a lower rate)", flush=True)
                    results["skipped"] = results.get("skipped", []) + [rate]
                    continue
                profilers = []
                if args.profile_rate == rate:
                    profilers = await start_profilers(stack, min(plan.profile_s, plan.duration),
                                                      REPO / "bench" / "results" / f"profile-{args.label}-{rate}")
                results["pipeline"].append(await run_phase(
                    f"{rate}/s", rate=rate, messages=take(int(rate * plan.duration)), producer=producer,
                    topic=topics.SUBMISSIONS, collector=collector, monitor=monitor, timeout=plan.timeout))
                if profilers:
                    out = await finish_profilers(profilers, plan.profile_s, f"profile-{args.label}-{rate}")
                    results.setdefault("profile_at_rate", {})[str(rate)] = out
            if plan.burst:
                msgs = take(plan.burst)
                profilers = []
                if args.profile:
                    profilers = await start_profilers(stack, plan.profile_s, REPO / "bench" / "results" /
                                                      f"profile-{args.label}")
                results["pipeline"].append(await run_phase(
                    "full speed", rate=None, messages=msgs, producer=producer, topic=topics.SUBMISSIONS,
                    collector=collector, monitor=monitor, timeout=plan.timeout))
                if profilers:
                    results["profile"] = await finish_profilers(profilers, plan.profile_s, f"profile-{args.label}")
            results["notification_kinds"] = dict(collector.kinds)
            results["peak_rss_mb"] = {k: round(v / 2**20, 1) for k, v in monitor.peak_rss.items()}
            ctask.cancel()
            await asyncio.gather(ctask, return_exceptions=True)
        finally:
            await producer.stop()
    finally:
        await monitor.stop()
        print("stopping the stack ...", flush=True)
        await asyncio.to_thread(stack.down)
        shutil.rmtree(root, ignore_errors=True)
    results["wall_s"] = round(time.monotonic() - t_start, 1)
    results["machine"]["calibration_ms_after"] = calibrate()
    return results


# --- reporting --------------------------------------------------------------------------------------

def full_speed(rows: list[dict]) -> dict | None:
    return next((r for r in rows if r["offered"] is None), None)


def report(results: dict) -> str:
    m = results["machine"]
    lines = [f"## {results['label']} ({results['started']}, code {results.get('code', '?')}, {results['wall_s']} s)", "",
             f"machine: {m['cpus']} CPUs, load before {', '.join(f'{x:.1f}' for x in m['load_before'])},"
             f" calibration {m.get('calibration_ms')} / {m.get('calibration_ms_after')} ms (lower is faster)", "",
             "| load | pipeline req/s | e2e p50 | p95 | p99 | requested->notified p99 | relay req/s | relay p99 |",
             "|---|---|---|---|---|---|---|---|"]
    base = {r["phase"]: r for r in results["baseline"]}
    for r in results["pipeline"]:
        b = base.get(r["phase"])
        sat = " (saturated)" if r.get("saturated") else ""
        inc = "" if r["completed"] == r["requests"] else f" ({r['requests'] - r['completed']} unfinished)"
        e, q = r["e2e_ms"], r["requested_ms"]
        row = (f"| {r['phase']} | {r['throughput']:.0f}{sat}{inc} | {e['p50']:.0f} ms | {e['p95']:.0f} ms |"
               f" {e['p99']:.0f} ms | {q['p99']:.0f} ms |")
        row += f" {b['throughput']:.0f} | {b['e2e_ms']['p99']:.0f} ms |" if b else " - | - |"
        lines.append(row)
    if results.get("skipped"):
        lines.append(f"| {', '.join(f'{r}/s' for r in results['skipped'])} | not run: saturated at a lower rate"
                     " | | | | | | |")
    p, b = full_speed(results["pipeline"]), full_speed(results["baseline"])
    if p and b:
        lines += ["", f"Full speed: pipeline {p['throughput']:.0f} req/s, bare relay {b['throughput']:.0f} req/s,"
                      f" ratio {p['throughput'] / b['throughput']:.2f}"]
    lines += ["", "Peak RSS (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in results.get("peak_rss_mb", {}).items())]
    if p:
        lines += ["CPU ms per request at full speed: " + ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(p["cpu_s_per_1k"].items(), key=lambda kv: -kv[1]))]
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    """Throughput and latency against the offered load: the last run drawn solid, earlier runs (--compare)
    faint and dotted; the bare relay of the last run in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    last = len(runs) - 1
    for i, res in enumerate(runs):
        now = i == last
        style = dict(ls="-" if now else ":", alpha=1.0 if now else 0.45, marker="o" if now else "x")
        label = res["label"]
        fixed = [r for r in res["pipeline"] if r["offered"]]
        x = [r["offered"] for r in fixed]
        ax1.plot(x, [r["throughput"] for r in fixed], color="C0", label=f"pipeline ({label})", **style)
        fs = full_speed(res["pipeline"])
        if fs:
            ax1.axhline(fs["throughput"], color="C0", lw=1, ls="--", alpha=style["alpha"] * 0.7)
            ax1.annotate(f"pipeline at full speed: {fs['throughput']:.0f}/s ({label})", (0.01, fs["throughput"]),
                         xycoords=("axes fraction", "data"), fontsize=7, color="C0", va="bottom")
        for q, color in ((50, "C2"), (95, "C1"), (99, "C4")):
            ax2.plot(x, [r["e2e_ms"][f"p{q}"] for r in fixed], color=color, label=f"p{q} ({label})", **style)
        if now:
            bfixed = [r for r in res["baseline"] if r["offered"]]
            if bfixed:
                bx = [r["offered"] for r in bfixed]
                ax1.plot(bx, [r["throughput"] for r in bfixed], color="C3", marker="s", alpha=0.7,
                         label="bare relay")
                ax2.plot(bx, [r["e2e_ms"]["p99"] for r in bfixed], color="C3", marker="s", alpha=0.7,
                         label="bare relay p99")
            bfs = full_speed(res["baseline"])
            if bfs:
                ax1.axhline(bfs["throughput"], color="C3", lw=1, ls="--", alpha=0.6)
                ax1.annotate(f"bare relay at full speed: {bfs['throughput']:.0f}/s", (0.01, bfs["throughput"]),
                             xycoords=("axes fraction", "data"), fontsize=7, color="C3", va="bottom")
    all_rates = sorted({r["offered"] for res in runs for part in ("pipeline", "baseline") for r in res[part]
                        if r["offered"]})
    ax1.plot(all_rates, all_rates, color="grey", lw=0.8, label="achieved = offered")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xticks(all_rates, [str(r) for r in all_rates])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("offered load (requests/s)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylabel("completed requests/s")
    ax1.set_title("Throughput (a request is complete at its 3rd notification.sent)")
    ax2.set_yscale("log")
    ax2.set_ylabel("ms, submission -> last notification.sent")
    ax2.axhline(100, color="grey", lw=0.8, ls="--")
    ax2.annotate("target: p99 <= 100 ms at 100 req/s", (0.01, 100), xycoords=("axes fraction", "data"),
                 fontsize=7, color="grey", va="bottom")
    ax2.set_title("Latency (phases that saturated included)")
    ax1.legend(fontsize=7, loc="center right")
    ax2.legend(fontsize=7, ncol=2, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--relay-hop":
        bootstrap, src, dst, group, size, fanout = sys.argv[2:8]
        asyncio.run(relay_hop(bootstrap, src, dst, group, int(size), int(fanout)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter phases (< 3 min)")
    parser.add_argument("--rates", help="offered loads, comma separated (requests/s)")
    parser.add_argument("--duration", type=float, help="seconds per offered load")
    parser.add_argument("--burst", type=int, help="requests sent at once for the full-speed phase (0: none)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--no-baseline", action="store_true", help="skip the bare relay")
    parser.add_argument("--profile", action="store_true", help="py-spy every service during the burst")
    parser.add_argument("--profile-rate", type=int, default=None, metavar="RATE",
                        help="py-spy every service during the phase at this offered load")
    parser.add_argument("--label", default="latest", help="name of this run in the results and the plot")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the services (e.g. NOTIFIER_DISPATCH_INTERVAL_S=0.1)")
    parser.add_argument("--compare", action="append", default=[], type=Path,
                        help="an earlier results JSON to draw in the plot too")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "performance.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--plot-only", nargs="+", type=Path, metavar="RESULTS_JSON",
                        help="no run: draw the plot from these results files (the last one solid)")
    args = parser.parse_args()
    if args.plot_only:
        runs = [json.loads(p.read_text()) for p in args.plot_only]
        plot(runs, args.plot)
        print("\n\n".join(report(r) for r in runs))
        print(f"plot: {args.plot}")
        return

    results = asyncio.run(run(args))
    out = REPO / "bench" / "results" / f"{args.label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print()
    print(report(results))
    print(f"\nresults: {out.relative_to(REPO)}")
    if not args.no_plot:
        runs = [json.loads(p.read_text()) for p in args.compare] + [results]
        plot(runs, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
