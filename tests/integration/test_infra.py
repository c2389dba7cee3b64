"""The foundation: a real broker round trip, and each service starting, healthy, and stopping cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import psutil
import pytest
from aiokafka.admin import NewTopic
from aiokafka.structs import TopicPartition

from cancelflow import kafka_clients
from cancelflow.stack import SERVICES
from shared import topics

pytestmark = pytest.mark.integration


async def test_produce_consume_round_trip_with_group_commit(infra):
    topic, group = f"roundtrip-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    admin = kafka_clients.admin(infra.bootstrap)  # the security settings too (the SASL compose stack)
    await admin.start()
    await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    producer = kafka_clients.producer(infra.bootstrap)
    await producer.start()
    sent = {f"m{i}".encode() for i in range(20)}
    for value in sorted(sent):
        await producer.send_and_wait(topic, value, key=value[-1:])
    await producer.stop()

    consumer = kafka_clients.consumer(infra.bootstrap, topic, group_id=group,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    received: set[bytes] = set()
    deadline = time.monotonic() + 30
    while received != sent and time.monotonic() < deadline:
        for records in (await consumer.getmany(timeout_ms=500)).values():
            received |= {r.value for r in records}
    await consumer.commit()
    await consumer.stop()
    assert received == sent

    committed = await admin.list_consumer_group_offsets(group)
    assert sum(meta.offset for tp, meta in committed.items() if tp.topic == topic) == len(sent)
    # A new member of the same group starts after the commit: nothing is delivered again.
    again = kafka_clients.consumer(infra.bootstrap, topic, group_id=group, enable_auto_commit=False)
    await again.start()
    batches = await again.getmany(timeout_ms=1500)
    await again.stop()
    assert not any(batches.values())
    await admin.delete_topics([topic])
    await admin.close()


async def test_spec_topics_exist_with_dlq_companions(infra):
    admin = kafka_clients.admin(infra.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        described = await admin.describe_topics(list(topics.ALL))
    finally:
        await admin.close()
    assert set(topics.all_with_dlq()) <= existing
    assert all(len(t["partitions"]) >= 2 for t in described), "several partitions per topic"


@pytest.mark.parametrize("service", SERVICES)
async def test_service_is_healthy_and_exposes_metrics(infra, service):
    if infra.stack is None:
        pytest.skip("service ports are the external stack's own")
    port = getattr(infra.stack.ports, service)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        ready = await http.get("/ready")
        health = await http.get("/health")
        metrics = await http.get("/metrics")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"service": service, "ready": True, "waiting_for": []}
    assert health.json()["started"] is True
    assert "cancelflow_outbox_backlog" in metrics.text
    # The lag gauge is measured every 5 s per subscribed partition.
    for _ in range(40):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            text = (await http.get("/metrics")).text
        lines = [line for line in text.splitlines()
                 if line.startswith("cancelflow_consumer_lag{") and f'service="{service}"' in line]
        if lines:
            break
        await asyncio.sleep(0.25)
    assert len({line.split('topic="')[1].split('"')[0] for line in lines}) >= 2, "every service reads 2+ topics"
    assert all(float(line.rsplit(" ", 1)[1]) >= 0 for line in lines)


@pytest.mark.parametrize("service", SERVICES)
def test_service_stops_cleanly_on_sigterm_and_restarts(infra, service):
    """SIGTERM: the service stops consuming, drains its outbox, closes, exits 0; then it comes back."""
    if infra.stack is None:
        pytest.skip("the external stack's processes are not ours to stop")
    stack = infra.stack
    proc = stack.procs[service]
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    # uvicorn re-raises the captured SIGTERM once shutdown is complete, so "killed by SIGTERM" is its clean exit.
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    log = (stack.logs / f"{service}.log").read_text().splitlines()
    assert any("shut down gracefully" in line for line in log[-10:])
    assert all(line.startswith("{") for line in log if line.strip()), "every log line is JSON"
    stack.procs.pop(service)
    stack.start_service(service)
    stack.wait_healthy([service], timeout=60)


def test_cli_up_detach_then_down_leaves_nothing(tmp_path):
    """The README's stack command on its own directory and ports: up --detach, status, down."""
    base = 24000 + os.getpid() % 1000 * 8
    env = os.environ | {"CANCELFLOW_STACK_DIR": str(tmp_path / "stack"), "CANCELFLOW_PORT_BASE": str(base)}
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):
        env.pop(key, None)
    cli = [sys.executable, "-m", "cancelflow.cli"]
    started = time.monotonic()
    up = subprocess.run([*cli, "up", "--detach"], env=env, capture_output=True, text=True, timeout=240)
    took = time.monotonic() - started
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        # A newcomer's first screen: the endpoints on stdout, one "healthy" line on stderr, no library's warnings.
        assert all("=" in line for line in up.stdout.splitlines()), up.stdout
        assert "Warning" not in up.stderr and len(up.stderr.strip().splitlines()) == 1, up.stderr
        lines = dict(line.split("=", 1) for line in up.stdout.splitlines() if "=" in line and " " not in line)
        assert lines["KAFKA_BOOTSTRAP_SERVERS"] == f"127.0.0.1:{base}"
        assert lines["INTAKE_URL"] == f"http://127.0.0.1:{base + 4}"
        assert httpx.get(lines["INTAKE_URL"] + "/ready").status_code == 200
        second = subprocess.run([*cli, "up", "--detach"], env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1 and "already running" in second.stdout
        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and status.stdout.count("yes") >= 14
        pids = list(__import__("json").loads((tmp_path / "stack" / "stack.json").read_text())["pids"].values())
    finally:
        down = subprocess.run([*cli, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert len(pids) == 7
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
    print(f"cancelflow up --detach: healthy in {took:.1f}s")
