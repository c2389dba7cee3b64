"""The faults the chaos run applies to the cluster stack, each a blocking step (run it in a thread while
traffic flows): broker bounces hard and clean, kill -9 of a service instance, scaling, a database restart."""

from __future__ import annotations

import asyncio
import time

from cancelflow import kafka_clients
from cancelflow.infra import postgres
from cancelflow.stack import SERVICES, Stack
from cancelflow.stack_cluster import broker_roles


async def _under_replicated(stack: Stack) -> int:
    admin = kafka_clients.admin(stack.kafka_connection, request_timeout_ms=5000)
    await admin.start()
    try:
        described = await admin.describe_topics(await admin.list_topics())
    finally:
        await admin.close()
    return sum(1 for t in described for p in t.get("partitions", ()) if len(p["isr"]) < len(p["replicas"]))


def wait_fully_replicated(stack: Stack, timeout: float = 240) -> None:
    """Until every partition, the internal ones included, has all its replicas in sync again."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = asyncio.run(_under_replicated(stack))
            if last == 0:
                return
        except Exception as exc:  # noqa: BLE001 - a node is still starting: ask again
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"partitions not fully replicated within {timeout:.0f}s: {last!r}")


def broker_leading_most(stack: Stack) -> str:
    roles = asyncio.run(broker_roles(stack.kafka_connection))
    node_id = max(roles, key=lambda n: roles[n]["leads"])
    return next(name for name, node in stack.kafka_nodes.items() if node.node_id == node_id)


def _start_broker(stack: Stack, name: str) -> None:
    stack.start_broker(name)
    wait_fully_replicated(stack)


def kill_broker(stack: Stack, name: str, down_for: float = 3.0) -> None:
    """kill -9 a broker, leave it down a moment (leaders move, writes go on with two in sync), start it."""
    stack.kill(name)
    time.sleep(down_for)
    _start_broker(stack, name)


def restart_broker(stack: Stack, name: str) -> None:
    """A clean restart (SIGTERM: the broker hands its leaderships over first), back in sync before return."""
    stack.stop_process(name, stack.pid_of(name), timeout=120)
    _start_broker(stack, name)


def kill_instances(stack: Stack, names: list[str]) -> None:
    """kill -9 each at once, then start them again (their partitions move to the others meanwhile)."""
    for name in names:
        stack.kill(name)
    time.sleep(1.0)
    for name in names:
        stack.start_service(name)
    stack.wait_healthy(names, timeout=240)


def scale_all(stack: Stack, count: int) -> None:
    """Every service to `count` instances at once; the new ones waited for."""
    started = []
    for service in SERVICES:
        started += stack.scale(service, count, wait=False)[0]
    stack.wait_healthy(started, timeout=240)


def restart_postgres(stack: Stack) -> None:
    stack.stop_process("postgres", stack.pid_of("postgres"))
    stack.start_postgres()
    asyncio.run(postgres.wait_ready(stack.pg_node.admin_url, 120))
