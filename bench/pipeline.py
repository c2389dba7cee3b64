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

The parts, a module each beside this one: load.py (the messages, the contracts, the open-loop driver),
phases.py (the plan, the collector of completions, a phase measured), relay_baseline.py (the bare relay),
sampling.py (RSS and CPU of the processes, the machine's speed, the code's revision), profiling.py (py-spy),
reporting.py (the table and the plot).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from cancelflow import kafka_clients  # noqa: E402 - the project's one Kafka client factory
from load import pipeline_message_sizes, sign_contracts, submission  # noqa: E402
from phases import Collector, plan_from, run_phase  # noqa: E402
from profiling import finish_profilers, start_profilers  # noqa: E402
from relay_baseline import RELAY_TOPICS, relay_hop, run_baseline  # noqa: E402
from reporting import plot, report  # noqa: E402
from mail_arrival import MailArrivals  # noqa: E402
from sampling import Monitor, calibrate, git_state, table_counts, counts_per_request  # noqa: E402


def _link_mail_dir(root: Path, target: Path | None) -> None:
    """The stack's `mail` a link to `target`, if given: the sink writes a file per mail, and on a disk mounted
    with `discard` its cost varied fivefold between runs of the same code."""
    if target is not None:
        (root / "mail").symlink_to(target)


async def run(args) -> dict:
    from cancelflow.infra import kafka
    from cancelflow.infra.ports import free_port
    from cancelflow.stack import SERVICES, Ports, Stack, StackConfig
    from shared import topics

    plan = plan_from(args)
    root = Path(tempfile.mkdtemp(prefix="cancelflow-bench-"))
    mail_dir = (Path(tempfile.mkdtemp(prefix="cancelflow-bench-mail-", dir=args.mail_dir_in))
                if args.mail_dir_in else None)
    _link_mail_dir(root, mail_dir)
    ports = Ports(*(free_port() for _ in range(8)))
    extra_env = dict(kv.split("=", 1) for kv in args.env)
    stack = Stack(StackConfig(root=root, ports=ports, partitions=args.partitions, extra_env=extra_env))
    monitor = Monitor()
    results: dict = {"label": args.label, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "machine": {"cpus": psutil.cpu_count(), "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
                                 "load_before": os.getloadavg(), "calibration_ms": calibrate()},
                     "code": git_state(),
                     "plan": plan.__dict__, "partitions": args.partitions, "env": extra_env,
                     "mail_dir_in": str(args.mail_dir_in) if args.mail_dir_in else None,
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
            _link_mail_dir(root, mail_dir)
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
            counts_before = await table_counts(stack.database_url)

            def take(n: int) -> list[tuple[str, bytes, bytes]]:
                out = []
                for _ in range(n):
                    i, cid = next(pool)
                    sid, value = submission(cid, i)
                    out.append((sid, cid.encode(), value))
                return out

            collector = Collector(bootstrap, (topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS))
            ctask = asyncio.create_task(collector.run())
            mail = MailArrivals(stack.mail_dir)
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
                    topic=topics.SUBMISSIONS, collector=collector, monitor=monitor, timeout=plan.timeout,
                    mail=mail))
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
                    collector=collector, monitor=monitor, timeout=plan.timeout, mail=mail))
                if profilers:
                    results["profile"] = await finish_profilers(profilers, plan.profile_s, f"profile-{args.label}")
            results["notification_kinds"] = dict(collector.kinds)
            await asyncio.sleep(1.5)  # the backends' counts, published
            measured = sum(r["requests"] for r in results["pipeline"]) + warmup
            results["table_writes_per_request"] = counts_per_request(
                counts_before, await table_counts(stack.database_url), measured)
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
        if mail_dir is not None:
            shutil.rmtree(mail_dir, ignore_errors=True)
    results["wall_s"] = round(time.monotonic() - t_start, 1)
    results["machine"]["calibration_ms_after"] = calibrate()
    return results


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
    parser.add_argument("--mail-dir-in", type=Path, metavar="DIR",
                        help="the SMTP sink's files in a directory under DIR (/dev/shm: off the disk)")
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
