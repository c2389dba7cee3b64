#!/usr/bin/env python
"""Soak: N cancellations through the whole pipeline at a fixed rate while the stack's clock runs fast, so a
year of operation (reminders, completions, the inbox window passing again and again) happens within the run.
Per tenth of the run: throughput, latency (p50/p99), each service's RSS, the rows of every table of every
service, the database's and the topics' size. A command, not a test (docs/performance.md, "Months of
operation"). Beside it: soak_snapshot.py (what is recorded at each tenth's end), soak_results.py (the tenths,
the summary, the curves and the table).

    .venv/bin/python bench/soak.py --n 500000 --rate 80 --collect-ms 200   # the issue's run (~2 h 5 min)
    .venv/bin/python bench/soak.py --n 150000 --rate 50           # what a shared 2-core box sustains (~55 min)

The load is one open-loop stream: every cancellation's `contract.signed` goes out `--lead-s` seconds ahead
of its `cancellation.submitted` (the first ones before the run), as an upstream system would send them. The
clock starts at real time and runs `--days` days over the measured run: a steady pace, not jumps, so
reminders (10:00 Tokyo, 14 and 3 days before the effective date) and completions (45 days after) fall due
day by day as they would in production, only faster. A warm-up of `--warmup-days` (default 50: past the
notice period, so the first measured tenth already carries the reminders and completions of earlier
requests) runs first at the same rate and pace; it is reported, not counted as a tenth. A request is complete
at its third `notification.sent` (acknowledgement and the two immediate reminders) or its rejection mail;
latency is from the bench's send to the record timestamp of that last notification.
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
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

import psutil  # noqa: E402

from cancelflow import kafka_clients  # noqa: E402
from load import START_DATE, sign_contracts, submission  # noqa: E402 - the pipeline bench's messages
from phases import Collector  # noqa: E402
from sampling import calibrate, git_state  # noqa: E402
from shared import topics  # noqa: E402
from shared.clock import FileClock  # noqa: E402
from shared.events import ContractSigned, new_envelope  # noqa: E402
from shared.vocabulary import SERVICES  # noqa: E402
from soak_results import markdown, plot, summarize, tenths  # noqa: E402
from soak_snapshot import snapshot  # noqa: E402


class FastClock:
    """The stack's clock file: real time until `start`, then `speed` times faster, written every 0.2 s."""

    def __init__(self, path: Path) -> None:
        self.file = FileClock(path)
        self.speed = 1.0
        self.t0 = time.time()
        self.origin = datetime.now(timezone.utc)

    def start(self, speed: float) -> None:
        self.origin, self.t0, self.speed = self.now(), time.time(), speed

    def now(self) -> datetime:
        return self.origin + timedelta(seconds=(time.time() - self.t0) * self.speed)

    async def run(self) -> None:
        while True:
            self.file.set(self.now())
            await asyncio.sleep(0.2)


def contract_message(cid: str) -> bytes:
    return new_envelope(ContractSigned(contract_id=cid, account_id="@" + cid.lower(), plan="standard",
                                       monthly_fee_jpy=10_000, start_date=START_DATE),
                        producer="bench", correlation_id=cid, causation_id=None).to_bytes()


async def run(args) -> dict:
    from cancelflow.infra.ports import free_port
    from cancelflow.stack import Ports, Stack, StackConfig

    # A `kill` stops the run as Ctrl-C does: through the finally below, which takes the stack down.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    root = Path(args.dir or tempfile.mkdtemp(prefix="cancelflow-soak-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if args.port_base:
        b = args.port_base
        ports = Ports(b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7)
    else:
        ports = Ports(*(free_port() for _ in range(8)))
    per_tenth = args.n // 10
    n = per_tenth * 10
    speed = args.days * 86400 / (n / args.rate)  # clock seconds per real second
    warmup = round(args.warmup_days * 86400 / speed * args.rate)
    total = warmup + n
    lead = max(1, round(args.lead_s * args.rate))
    env = {f"{s.upper()}_INBOX_PRUNE_INTERVAL_S": str(args.prune_interval_s) for s in SERVICES}
    env |= {"ELIGIBILITY_COMPLETION_INTERVAL_S": "1", "NOTIFIER_DISPATCH_INTERVAL_S": "0.5"}
    if args.collect_ms:
        env |= {f"{s.upper()}_BATCH_COLLECT_MS": str(args.collect_ms) for s in SERVICES}
    stack = Stack(StackConfig(root=root, ports=ports, clock_file=root / "clock", extra_env=env))
    clock = FastClock(root / "clock")
    clock.file.set(clock.now())
    results: dict = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "n": n,
                     "warmup": warmup, "rate": args.rate, "days": args.days, "warmup_days": args.warmup_days,
                     "clock_speed": round(speed), "code": git_state(),
                     "machine": {"cpus": psutil.cpu_count(), "load_before": os.getloadavg(),
                                 "calibration_ms": calibrate()},
                     "snapshots": [], "tenths": []}
    ticker = asyncio.create_task(clock.run())
    print(f"{warmup:,} warm-up + {n:,} cancellations at {args.rate}/s, clock x{speed:,.0f}"
          f" ({args.warmup_days} + {args.days} days), ~{total / args.rate / 60:.0f} min", flush=True)
    try:
        print(f"starting the stack in {root} ...", flush=True)
        await asyncio.to_thread(stack.start)
        bootstrap = stack.bootstrap
        collector = Collector(bootstrap, (topics.REQUESTS, topics.NOTIFICATIONS))
        collecting = asyncio.create_task(collector.run())
        await collector.ready.wait()
        contracts = [f"C-S{i:07d}-{uuid.uuid4().hex[:4]}" for i in range(total)]
        await sign_contracts(bootstrap, contracts[:lead])
        producer = kafka_clients.producer(bootstrap, linger_ms=2)
        await producer.start()
        t_run = time.monotonic()
        sent: dict[str, float] = {}
        order: list[str] = []
        boundaries = [warmup + k * per_tenth for k in range(11)]  # send index where each tenth begins
        snapshots: list[asyncio.Task] = []
        try:
            clock.start(speed)
            start = time.monotonic()
            futures = []
            for i in range(total):
                if i in boundaries:
                    snapshots.append(asyncio.create_task(snapshot(
                        stack, root, clock, collector, "warm-up end" if i == warmup else f"tenth {boundaries.index(i)}",
                        t_run)))
                delay = start + i / args.rate - time.monotonic()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                if i + lead < total:
                    cid = contracts[i + lead]
                    futures.append(await producer.send(topics.CONTRACTS, contract_message(cid), key=cid.encode()))
                sid, value = submission(contracts[i], i)
                sent[sid] = time.time()
                order.append(sid)
                futures.append(await producer.send(topics.SUBMISSIONS, value, key=contracts[i].encode()))
                if len(futures) > 10_000:
                    await asyncio.gather(*futures)
                    futures = []
                if i % (per_tenth // 4 or 1) == 0 and i >= warmup:
                    print(f"  sent {i:,}/{total:,}, behind by {max(0.0, time.monotonic() - start - i / args.rate):.1f} s,"
                          f" completed {len(collector.done):,}, clock {clock.now():%Y-%m-%d}", flush=True)
            await asyncio.gather(*futures)
            offered_s = time.monotonic() - start
            deadline = time.monotonic() + args.timeout
            pending = [s for s in order[warmup:] if collector.completed(s) is None]
            while pending and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
                pending = [s for s in pending if collector.completed(s) is None]
            snapshots.append(asyncio.create_task(snapshot(stack, root, clock, collector, "end", t_run)))
            results["snapshots"] = [await t for t in snapshots]
        finally:
            await producer.stop()
            collecting.cancel()
        results["offered_rate"] = round(total / offered_s, 1)
        results["tenths"] = tenths(results["snapshots"], order, sent, collector, boundaries)
        for row in results["tenths"]:
            snap = row["snapshot"]
            inbox = sum(v for k, v in snap["rows"].items() if k.endswith(".processed_events"))
            print(f"tenth {row['tenth']:2}: {row['throughput']:7.1f}/s  p50 {row['p50_ms']:6} ms"
                  f"  p99 {row['p99_ms']:6} ms  unfinished {row['unfinished']}  inbox rows {inbox:,}"
                  f"  db {snap['db_bytes'] / 2**20:.0f} MiB  topics {sum(snap['topic_bytes'].values()) / 2**20:.0f} MiB"
                  f"  rss MiB " + " ".join(f"{k} {v:.0f}" for k, v in snap["rss_mib"].items())
                  + f"  lag {snap['lag']}  cpu {row['cpu_cores']}  due {snap['states'].get('notifications due, not sent')}",
                  flush=True)
            print("          rows: " + ", ".join(f"{k} {v:,}" for k, v in snap["rows"].items()), flush=True)
            print("          topics MiB: " + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in snap["topic_bytes"].items()),
                  flush=True)
        if args.report:
            results["report"] = time_report(stack, datetime.fromtimestamp(results["snapshots"][-2]["wall"], timezone.utc),
                                            collector.key_of.get(order[warmup]))
    finally:
        ticker.cancel()
        await asyncio.to_thread(stack.down)
        if "tenths" in results:  # written first: deleting a long run's mails takes many minutes
            results["summary"] = summarize(results)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2))
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return results


REPORT_PATHS = {
    # `cancelflow report`: the four topics merged in time order, each request folded into the counters
    # once closed; then the same from the last tenth's start (--since).
    "whole log (time order, folded)": "from cancelflow.report import stream_figures; f = asyncio.run(stream_figures(B))",
    "--since (last tenth)": (
        "from cancelflow.report import stream_figures; f = asyncio.run(stream_figures(B, SINCE))"),
}


def time_report(stack, since: datetime, request_id: str | None = None) -> dict:
    """`cancelflow report`'s reading and figures over the soak's topics, each way in a process of its own:
    seconds, peak RSS and the accepted count (the same figures whichever way, the window's fewer)."""
    out = {}
    for label, code in REPORT_PATHS.items():
        script = ("import asyncio, resource, time, json; from datetime import datetime; t = time.monotonic();"
                  f"B = {stack.bootstrap!r}; SINCE = datetime.fromisoformat({since.isoformat()!r});" + code +
                  "; print(json.dumps({'seconds': round(time.monotonic() - t, 2), 'accepted': f.accepted,"
                  " 'notifications': sum(f.notifications_by_kind.values()),"
                  " 'peak_rss_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))")
        out[label] = _timed(stack, script)
        print(f"report {label}: {out[label]}", flush=True)
    if request_id:
        # `cancelflow trace` of one request of the first tenth, over every topic of the run.
        script = ("import asyncio, resource, time, json; t = time.monotonic();"
                  "from cancelflow.ops.tracing import collect_trace;"
                  f"rows = asyncio.run(collect_trace({stack.bootstrap!r}, {request_id!r}));"
                  "print(json.dumps({'seconds': round(time.monotonic() - t, 2), 'rows': len(rows),"
                  " 'peak_rss_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))")
        out["trace (a request of the first tenth)"] = _timed(stack, script)
        print(f"trace {request_id}: {out['trace (a request of the first tenth)']}", flush=True)
    return out


def _timed(stack, script: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                          env=os.environ | {"KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap})
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {"error": proc.stderr[-500:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", "--count", dest="n", type=int, default=500_000,
                    help="measured cancellations (default: the issue's 500,000)")
    ap.add_argument("--rate", type=float, default=150, help="submissions per second, fixed")
    ap.add_argument("--days", type=float, default=365, help="how far the clock runs over the measured run")
    ap.add_argument("--warmup-days", type=float, default=50, help="clock days of warm-up before the first tenth")
    ap.add_argument("--lead-s", type=float, default=20, help="seconds a contract is signed before its cancellation")
    ap.add_argument("--prune-interval-s", type=float, default=5, help="each service's inbox pruning interval")
    ap.add_argument("--collect-ms", type=int, default=0, help="every service's batch_collect_ms (0: the default)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds the run may take to finish after its last send")
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("CANCELFLOW_PORT_BASE", 0)) or None)
    ap.add_argument("--dir", help="the stack's directory (kept)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary stack directory")
    ap.add_argument("--report", action="store_true", help="time `cancelflow report` over the topics at the end")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/soak-<time>.json)")
    ap.add_argument("--plot", type=Path, default=None,
                    help="a results JSON (no run): its curves into --png, its table printed as markdown")
    ap.add_argument("--png", type=Path, default=REPO / "docs" / "soak.png")
    args = ap.parse_args()
    if args.plot:
        results = json.loads(args.plot.read_text())
        plot(results, args.png)
        print(markdown(results))
        return
    args.out = args.out or REPO / "bench" / "results" / f"soak-{datetime.now():%Y%m%d-%H%M%S}.json"
    results = asyncio.run(run(args))
    print(json.dumps(results["summary"], indent=2))
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
