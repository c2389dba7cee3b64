#!/usr/bin/env python
"""Soak: N cancellations through the whole pipeline at a fixed rate, the stack's clock moved forward as the
run goes so that reminders, completions and the inbox window all happen. Per tenth of the run: throughput,
latency (p50/p99), each service's RSS, the rows of every table of every service, the database's and the
topics' size. A command, not a test (docs/performance.md, "Months of operation").

    .venv/bin/python bench/soak.py --n 500000 --rate 150          # the issue's run (about an hour)
    .venv/bin/python bench/soak.py --n 20000 --rate 40            # what a shared 2-core box finishes in ~10 min

Input is the bench's own: one `contract.signed` and one `cancellation.submitted` per cancellation (the
contracts of a tenth are signed just before it, off the clock). A request is complete at its third
`notification.sent` (acknowledgement and the two immediate reminders) or its rejection mail; latency is from
the bench's send to the record timestamp of that last notification. The clock moves `--days-per-tenth`
(4) days at each tenth, so the run spans 40 days: past the 7-day inbox window, the 14- and 3-day reminders
and the effective dates of the first tenths' requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
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

import asyncpg  # noqa: E402
import psutil  # noqa: E402

import pipeline as bench  # noqa: E402 - the pipeline bench's messages, collector and load driver
from cancelflow import kafka_clients  # noqa: E402
from shared import topics  # noqa: E402
from shared.clock import FileClock  # noqa: E402
from shared.vocabulary import SERVICES  # noqa: E402


class MovingClock:
    """The stack's clock file: real time plus an offset the run moves forward, written every 0.5 s."""

    def __init__(self, path: Path) -> None:
        self.file = FileClock(path)
        self.offset = timedelta()

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    async def run(self) -> None:
        while True:
            self.file.set(self.now())
            await asyncio.sleep(0.5)


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


async def table_rows(url: str) -> tuple[dict[str, int], int]:
    conn = await asyncpg.connect(url)
    try:
        rows = {}
        for r in await conn.fetch("SELECT table_schema, table_name FROM information_schema.tables"
                                  " WHERE table_schema = ANY($1::text[]) AND table_type = 'BASE TABLE'"
                                  " ORDER BY 1, 2", list(SERVICES)):
            rows[f"{r[0]}.{r[1]}"] = await conn.fetchval(f'SELECT count(*) FROM "{r[0]}"."{r[1]}"')
        return rows, await conn.fetchval("SELECT pg_database_size(current_database())")
    finally:
        await conn.close()


async def run(args) -> dict:
    from cancelflow.infra.ports import free_port
    from cancelflow.stack import Ports, Stack, StackConfig

    root = Path(args.dir or tempfile.mkdtemp(prefix="cancelflow-soak-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if args.port_base:
        b = args.port_base
        ports = Ports(b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7)
    else:
        ports = Ports(*(free_port() for _ in range(8)))
    env = {f"{s.upper()}_INBOX_PRUNE_INTERVAL_S": "5" for s in SERVICES}
    env |= {"ELIGIBILITY_COMPLETION_INTERVAL_S": "1", "NOTIFIER_DISPATCH_INTERVAL_S": "0.5"}
    stack = Stack(StackConfig(root=root, ports=ports, clock_file=root / "clock", extra_env=env))
    clock = MovingClock(root / "clock")
    clock.file.set(clock.now())
    per_tenth = args.n // 10
    results: dict = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "n": per_tenth * 10,
                     "rate": args.rate, "days_per_tenth": args.days_per_tenth, "code": bench.git_state(),
                     "machine": {"cpus": psutil.cpu_count(), "load_before": os.getloadavg(),
                                 "calibration_ms": bench.calibrate()},
                     "tenths": []}
    ticker = asyncio.create_task(clock.run())
    try:
        print(f"starting the stack in {root} ...", flush=True)
        await asyncio.to_thread(stack.start)
        bootstrap = stack.bootstrap
        collector = bench.Collector(bootstrap, (topics.REQUESTS, topics.NOTIFICATIONS))
        collecting = asyncio.create_task(collector.run())
        await collector.ready.wait()
        producer = kafka_clients.producer(bootstrap, linger_ms=2)
        await producer.start()
        t_run = time.monotonic()
        try:
            last_tenth_at = datetime.now(timezone.utc)
            for tenth in range(10):
                last_tenth_at = datetime.now(timezone.utc)
                clock.offset = timedelta(days=args.days_per_tenth * tenth)
                contracts = [f"C-S{tenth}{i:07d}-{uuid.uuid4().hex[:4]}" for i in range(per_tenth)]
                await bench.sign_contracts(bootstrap, contracts)
                messages = []
                for i, cid in enumerate(contracts):
                    sid, value = bench.submission(cid, tenth * per_tenth + i)
                    messages.append((sid, cid.encode(), value))
                t0 = time.monotonic()
                sent = await bench.drive(producer, topics.SUBMISSIONS, messages, args.rate)
                offered_s = time.monotonic() - t0
                deadline = time.monotonic() + args.timeout
                pending = set(sent)
                while pending and time.monotonic() < deadline:
                    pending = {s for s in pending if collector.completed(s) is None}
                    await asyncio.sleep(0.25)
                done = {s: collector.completed(s) for s in sent if collector.completed(s) is not None}
                latencies = sorted((done[s] - sent[s]) * 1000 for s in done)
                first, last = min(sent.values()), max(done.values()) if done else float("nan")
                rows, db_bytes = await table_rows(stack.database_url)
                row = {
                    "tenth": tenth + 1, "clock": clock.now().isoformat(timespec="seconds"),
                    "completed": len(done), "unfinished": len(pending),
                    "throughput": round(len(done) / (last - first), 1) if done else 0.0,
                    "offered_rate": round(len(sent) / offered_s, 1),
                    "p50_ms": round(bench.pct(latencies, 50)), "p99_ms": round(bench.pct(latencies, 99)),
                    "rss_mib": {n: rss_mib(stack.procs[n].pid) for n in (*SERVICES, "kafka", "postgres")},
                    "rows": rows, "db_bytes": db_bytes, "topic_bytes": topic_bytes(root),
                    "elapsed_s": round(time.monotonic() - t_run, 1), "load": os.getloadavg()[0],
                }
                results["tenths"].append(row)
                inbox = sum(v for k, v in rows.items() if k.endswith(".processed_events"))
                print(f"tenth {tenth + 1:2}: {row['throughput']:7.1f}/s  p50 {row['p50_ms']:6} ms"
                      f"  p99 {row['p99_ms']:6} ms  unfinished {len(pending)}  inbox rows {inbox:,}"
                      f"  db {db_bytes / 2**20:.0f} MiB  topics {sum(row['topic_bytes'].values()) / 2**20:.0f} MiB"
                      f"  rss " + " ".join(f"{n[:4]} {v:.0f}" for n, v in row["rss_mib"].items()), flush=True)
        finally:
            await producer.stop()
            collecting.cancel()
        if args.report:
            results["report"] = time_report(stack, last_tenth_at)
    finally:
        ticker.cancel()
        await asyncio.to_thread(stack.down)
        if not args.keep and not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    results["summary"] = summarize(results)
    return results


REPORT_PATHS = {
    # What `cancelflow report` did before: every record of the four topics in memory (`read_records`, whose
    # 30 s reading limit is lifted here so that it reads them all), then the figures.
    "before (all records in memory)": (
        "from cancelflow.ops.records import read_records; from cancelflow.report import REPORT_TOPICS, compute_report;"
        "rs = asyncio.run(read_records(B, REPORT_TOPICS, 3600));"
        "f = compute_report([dict(r.envelope) for r in rs if r.envelope is not None])"),
    "after (streamed)": "from cancelflow.report import stream_figures; f = asyncio.run(stream_figures(B))",
    "after --since (last tenth)": (
        "from cancelflow.report import stream_figures; f = asyncio.run(stream_figures(B, SINCE))"),
}


def time_report(stack, since: datetime) -> dict:
    """`cancelflow report`'s reading and figures over the soak's topics, each way in a process of its own:
    seconds, peak RSS and the accepted count (the same figures whichever way, the window's fewer)."""
    out = {}
    for label, code in REPORT_PATHS.items():
        script = ("import asyncio, resource, time, json; from datetime import datetime; t = time.monotonic();"
                  f"B = {stack.bootstrap!r}; SINCE = datetime.fromisoformat({since.isoformat()!r});" + code +
                  "; print(json.dumps({'seconds': round(time.monotonic() - t, 2), 'accepted': f.accepted,"
                  " 'notifications': sum(f.notifications_by_kind.values()),"
                  " 'peak_rss_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))")
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                              env=os.environ | {"KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap})
        out[label] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
            "error": proc.stderr[-500:]}
        print(f"report {label}: {out[label]}", flush=True)
    return out


def summarize(results: dict) -> dict:
    t = results["tenths"]
    if len(t) < 2:
        return {}
    first, last = t[0], t[-1]
    inbox = [sum(v for k, v in r["rows"].items() if k.endswith(".processed_events")) for r in t]
    return {
        "throughput_first_last": [first["throughput"], last["throughput"]],
        "throughput_within_10pct": abs(last["throughput"] - first["throughput"]) <= 0.1 * first["throughput"],
        "p99_first_last_ms": [first["p99_ms"], last["p99_ms"]],
        "p99_within_10pct": abs(last["p99_ms"] - first["p99_ms"]) <= 0.1 * first["p99_ms"],
        "rss_growth_mib": {n: round(last["rss_mib"][n] - t[1]["rss_mib"][n], 1) for n in last["rss_mib"]},
        "inbox_rows_per_tenth": inbox,
        "unfinished": sum(r["unfinished"] for r in t),
        "topic_bytes_per_cancellation": round(sum(last["topic_bytes"].values()) / results["n"]),
        "db_bytes_per_cancellation": round(last["db_bytes"] / results["n"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=500_000, help="cancellations (default: the issue's 500,000)")
    ap.add_argument("--rate", type=float, default=150, help="submissions per second, fixed")
    ap.add_argument("--days-per-tenth", type=float, default=4, help="how far the clock moves per tenth")
    ap.add_argument("--timeout", type=float, default=120, help="seconds a tenth may take to finish after its last send")
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("CANCELFLOW_PORT_BASE", 0)) or None)
    ap.add_argument("--dir", help="the stack's directory (kept)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary stack directory")
    ap.add_argument("--report", action="store_true", help="time `cancelflow report` over the topics at the end")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/soak-<time>.json)")
    args = ap.parse_args()
    results = asyncio.run(run(args))
    out = args.out or REPO / "bench" / "results" / f"soak-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results["summary"], indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
