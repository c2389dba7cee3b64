"""The local stack's processes beyond one of each: a Kafka cluster of combined broker+controller nodes
(`cancelflow up --brokers 3`) and several instances of every service in its consumer group
(`--instances N`, `cancelflow scale SERVICE N`), with what `cancelflow status --json` says of each process.

Names: a single broker is `kafka`, the nodes of a cluster `kafka-1`..`kafka-N`; a service's first instance is
its own name (`intake`), the next ones `intake-2`, `intake-3`, ... Ports (see `Ports`): the cluster's client
listeners on consecutive ports from `kafka_cluster`, its controllers right after them; instance k >= 2 of
the i-th service on `instances + 4 * (k - 2) + i`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from shared.vocabulary import SERVICES

from .infra.errors import InfraError
from .infra.ports import wait_port

if TYPE_CHECKING:
    from .stack import Stack

MAX_INSTANCES = 20
# What each service does besides consuming its topics (scheduled work is claimed row by row, FOR UPDATE
# SKIP LOCKED, so every instance runs it and each due row is done once by whichever claims it).
SCHEDULED = {"eligibility": "completions on the effective date", "notifier": "due e-mails (reminders)",
             "intake": "HTTP intake", "billing": ""}
_INSTANCE = re.compile(r"^(?P<service>[a-z]+)(?:-(?P<k>\d+))?$")


@dataclass(frozen=True)
class Process:
    """One process of the stack, by its name."""

    name: str

    @property
    def kind(self) -> str:
        if self.name == "kafka" or self.name.startswith("kafka-"):
            return "broker"
        if self.name in ("postgres", "smtp"):
            return {"postgres": "database", "smtp": "smtp"}[self.name]
        return "service"

    @property
    def service(self) -> str | None:
        match = _INSTANCE.match(self.name)
        return match["service"] if self.kind == "service" and match and match["service"] in SERVICES else None

    @property
    def instance(self) -> int:
        match = _INSTANCE.match(self.name)
        return int(match["k"]) if match and match["k"] else 1


def instance_name(service: str, k: int) -> str:
    return service if k == 1 else f"{service}-{k}"


def broker_names(brokers: int) -> list[str]:
    return ["kafka"] if brokers == 1 else [f"kafka-{k}" for k in range(1, brokers + 1)]


def check_brokers(brokers: int) -> None:
    if brokers < 1 or brokers == 2:
        # Two nodes: replication 2 with min.insync.replicas 2 stops every write when one node is down.
        raise InfraError(f"--brokers {brokers}: run 1 (development) or 3 and more (replication 3, "
                         "min.insync.replicas 2, one node may be down)")


def check_instances(count: int, what: str = "--instances") -> None:
    if not 1 <= count <= MAX_INSTANCES:
        raise InfraError(f"{what} {count}: between 1 and {MAX_INSTANCES} instances of a service")


def check_cluster_data(root: Path, brokers: int) -> None:
    """A cluster's data is made for its number of nodes (the controller quorum is written at format)."""
    marker = root / "kafka-cluster"
    if brokers == 1:
        return
    if marker.exists() and marker.read_text().strip() != str(brokers):
        was = marker.read_text().strip()
        raise InfraError(f"the Kafka cluster data in {root} was made with --brokers {was}: start it with "
                         f"`cancelflow up --brokers {was}`, or remove {root}/kafka-* to start afresh")
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(brokers))


def cluster_id(root: Path) -> str:
    """The one cluster id every node of the stack's cluster is formatted with (made once)."""
    from .infra.kafka import new_cluster_id

    path = root / "kafka-cluster-id"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(new_cluster_id())
    return path.read_text().strip()


async def broker_roles(connection) -> dict[int, dict]:
    """Per node id: the partitions it leads and whether it is the active controller (asked of the cluster)."""
    from . import kafka_clients

    admin = kafka_clients.admin(connection, request_timeout_ms=5000)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        names = [t for t in await admin.list_topics() if not t.startswith("__")]
        described = await admin.describe_topics(names) if names else []
    finally:
        await admin.close()
    leaders = Counter(p["leader"] for t in described for p in t.get("partitions", ()))
    controller = cluster.get("controller_id")
    return {b["node_id"]: {"leads": leaders.get(b["node_id"], 0), "controller": b["node_id"] == controller}
            for b in cluster.get("brokers", ())}


def broker_role(info: dict | None) -> str:
    if info is None:
        return "broker+controller (not in the cluster's metadata)"
    active = ", active controller" if info["controller"] else ""
    return f"broker+controller{active}, leader of {info['leads']} partitions"


def service_role(service: str, group: str) -> str:
    extra = SCHEDULED.get(service, "")
    return f"consumer group {group}" + (f"; {extra}" if extra else "")


def roles_of_brokers(connection) -> dict[int, dict]:
    try:
        return asyncio.run(broker_roles(connection))
    except Exception:  # noqa: BLE001 - status goes on without the roles when the cluster does not answer
        return {}



def scale(stack: "Stack", service: str, count: int, *, wait: bool = True) -> tuple[list[str], list[str]]:
    """`count` instances of `service` on this running stack: (started, stopped). Started ones are waited
    for; the highest-numbered instances are stopped first (SIGTERM: their batches finish and commit)."""
    check_instances(count, f"scale {service}")
    current = stack.instances_of(service)
    stack.scaled_to[service] = count
    started = [instance_name(service, k) for k in range(current + 1, count + 1)]
    stopped = [instance_name(service, k) for k in range(current, count, -1)]
    for name in started:
        stack.start_service(name)
    for name in stopped:
        pid = stack.procs[name].pid if name in stack.procs else (stack.adopted | stack.recorded_pids()).get(name)
        if pid is not None:
            stack.stop_process(name, pid)
    stack._save()
    if started and wait:
        stack.wait_healthy(started, timeout=60 + 30 * len(started))
    return started, stopped


def status_rows(stack: "Stack") -> list[dict]:
    """Every recorded process: kind, name, pid, port, running, healthy and its role in the stack."""
    alive = stack.alive()
    recorded = stack.recorded_pids()
    kinds = {"broker": 0, "database": 1, "smtp": 2, "service": 3}
    names = sorted(recorded, key=lambda n: (kinds[Process(n).kind], Process(n).service or "",
                                            Process(n).instance, n))
    brokers = roles_of_brokers(stack.kafka_connection) if any(
        Process(n).kind == "broker" for n in alive) else {}
    rows = []
    for name in names:
        proc = Process(name)
        port = stack.port_of(name)
        healthy = None
        if name in alive and proc.kind == "service":
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                healthy = False
        elif name in alive:
            healthy = wait_port(port, 1)
        if proc.kind == "broker":
            role = broker_role(brokers.get(stack.kafka_nodes[name].node_id))
        elif proc.kind == "service":
            role = service_role(proc.service, proc.service)
        else:
            role = {"database": "PostgreSQL (every service's schema)", "smtp": "SMTP sink"}[proc.kind]
        row = {"kind": proc.kind, "name": name, "pid": recorded[name], "port": port, "running": name in alive,
               "healthy": healthy, "role": role}
        if proc.kind == "service":
            row |= {"service": proc.service, "instance": proc.instance}
        rows.append(row)
    return rows


def dumps(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)
