"""The pipeline bench's baseline: a bare aiokafka relay with the pipeline's hops (one process per hop,
consume -> produce with acks=all, offsets committed after the produce is acknowledged, no database), the
same partitions, message sizes and fan-out, driven by the same load. Run as a script, one hop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: one hop, a process of its own
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402

from cancelflow import kafka_clients  # noqa: E402
from phases import NOTIFICATIONS_PER_REQUEST, Collector, Plan, run_phase  # noqa: E402
from sampling import Monitor  # noqa: E402


RELAY_TOPICS = ("bench.relay.submissions", "bench.relay.requests", "bench.relay.decisions",
                "bench.relay.settlements", "bench.relay.notifications")


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


if __name__ == "__main__":  # --relay-hop BOOTSTRAP SRC DST GROUP SIZE FANOUT (run_baseline starts these)
    assert sys.argv[1] == "--relay-hop", sys.argv
    _bootstrap, _src, _dst, _group, _size, _fanout = sys.argv[2:8]
    asyncio.run(relay_hop(_bootstrap, _src, _dst, _group, int(_size), int(_fanout)))
