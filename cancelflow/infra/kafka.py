"""A real Apache Kafka broker in KRaft mode, from Maven Central jars, run with the JDK: a single node, or one
node of a cluster whose nodes are each broker and controller (a static controller quorum)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import InfraError, PortTaken, bind_failed, cause_line
from .topic_admin import create_topics  # noqa: F401  (the stack, tests and benches create topics here)

OFFSETS_RETENTION_MINUTES = 400 * 24 * 60
REPO_ROOT = Path(__file__).resolve().parents[2]
POM = REPO_ROOT / "infra" / "kafka" / "pom.xml"
LOG4J_CONFIG = REPO_ROOT / "infra" / "kafka" / "log4j2.properties"
CACHE = Path(os.environ.get("CANCELFLOW_CACHE", REPO_ROOT / ".cache"))


def kafka_version() -> str:
    """The pinned broker version (the POM is the one place it is written)."""
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    assert match, "infra/kafka/pom.xml has no <kafka.version>"
    return match.group(1)


def libs_dir() -> Path:
    return CACHE / f"kafka-{kafka_version()}-libs"


def require_tool(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise InfraError(f"`{name}` not found: {install_hint}")
    return path


def ensure_jars() -> Path:
    """Fetch the broker's runtime jars into the project's cache (once)."""
    target = libs_dir()
    marker = target / ".complete"
    if marker.exists():
        return target
    mvn = require_tool("mvn", "install Maven (apt-get install maven) to fetch the Kafka broker")
    require_tool("java", "install a JDK 17+ (apt-get install openjdk-17-jre-headless) to run the Kafka broker")
    target.mkdir(parents=True, exist_ok=True)
    cmd = [
        mvn, "-q", "-B", f"-Dmaven.repo.local={CACHE / 'm2'}", "-f", str(POM),
        "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={target}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise InfraError(f"Maven could not fetch Kafka {kafka_version()}: {_maven_error(result.stdout + result.stderr)}")
    marker.write_text(kafka_version())
    return target


def _maven_error(output: str) -> str:
    """Maven's own error line ("[ERROR] Failed to execute goal ... Could not resolve ..."), else the cause line."""
    errors = [line.strip() for line in output.splitlines() if line.startswith("[ERROR]") and line.strip() != "[ERROR]"]
    return errors[0][:400] if errors else cause_line(output)


@dataclass(frozen=True)
class KafkaNode:
    data_dir: Path
    port: int
    controller_port: int
    heap_mb: int = 512
    partitions: int = 4
    # (username, password): the client listener then requires SASL/SCRAM-SHA-512.
    scram_user: tuple[str, str] | None = None
    # With `scram_user`: more SCRAM users (one per application), and ACLs on (the StandardAuthorizer, nothing
    # allowed without an ACL); `scram_user` is then the broker's own principal, the only super user, on the
    # controller listener too (SASL/PLAIN: SCRAM users live in the metadata the controller serves).
    client_users: tuple[tuple[str, str], ...] = ()
    acls: bool = False
    # (PEM with the PKCS#8 key and the certificate chain, PEM of the CA): the client listener is TLS.
    tls: tuple[Path, Path] | None = None
    node_id: int = 1
    # Every node of a cluster as (node id, controller port), this one included; empty: a single node.
    voters: tuple[tuple[int, int], ...] = ()
    cluster_id: str | None = None  # the same for every node of a cluster

    @property
    def replication(self) -> int:
        """The replication factor of every topic, the internal ones included: one copy per node."""
        return max(len(self.voters), 1)

    @property
    def min_insync(self) -> int:
        """Replicas that must have a write before it is acknowledged (acks=all): two once there are three."""
        return 2 if self.replication >= 3 else 1

    @property
    def protocol(self) -> str:
        return ("SASL_" if self.scram_user else "") + ("SSL" if self.tls else "PLAINTEXT")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _listener_lines(self) -> list[str]:
        p = self.protocol
        lines = [
            f"listeners={p}://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            f"advertised.listeners={p}://127.0.0.1:{self.port}",
            f"listener.security.protocol.map={p}:{p},CONTROLLER:{'SASL_PLAINTEXT' if self.acls else 'PLAINTEXT'}",
            f"inter.broker.listener.name={p}",
        ]
        if self.scram_user:
            user, password = self.scram_user
            lines += [
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                f"listener.name.{p.lower()}.scram-sha-512.sasl.jaas.config="
                f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{password}";',
            ]
        if self.scram_user and self.acls:
            user, password = self.scram_user
            lines += [
                "sasl.mechanism.controller.protocol=PLAIN",
                "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
                "listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule"
                f' required username="{user}" password="{password}" user_{user}="{password}";',
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
                "allow.everyone.if.no.acl.found=false",
                f"super.users=User:{user}",
            ]
        if self.tls:
            keystore, ca = self.tls
            lines += [
                "ssl.keystore.type=PEM", f"ssl.keystore.location={keystore}",
                # The broker talks to itself over this listener too, so it trusts the same CA.
                "ssl.truststore.type=PEM", f"ssl.truststore.location={ca}",
            ]
        return lines

    def _quorum_line(self) -> str:
        if self.voters:
            return "controller.quorum.voters=" + ",".join(f"{n}@127.0.0.1:{p}" for n, p in self.voters)
        return f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}"

    def server_properties(self) -> str:
        rf, isr = self.replication, self.min_insync
        return "\n".join([
            "process.roles=broker,controller",
            f"node.id={self.node_id}",
            *self._listener_lines(),
            "controller.listener.names=CONTROLLER",
            self._quorum_line(),
            f"log.dirs={self.data_dir / 'log'}",
            f"num.partitions={self.partitions}",
            # One replica per node, internal topics (offsets, transactions) as much as the business ones;
            # a write is acknowledged once `isr` replicas have it; an out-of-sync replica never becomes leader.
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            "unclean.leader.election.enable=false",
            # A node back from a restart leads its preferred partitions again within seconds, not minutes.
            "leader.imbalance.check.interval.seconds=10",
            f"offsets.topic.replication.factor={rf}",
            "offsets.topic.num.partitions=8",
            # A stopped group's offsets are kept as long as the business topics keep records (400 days, not
            # the default 7): with expired offsets a restart would re-read more than the inbox window.
            f"offsets.retention.minutes={OFFSETS_RETENTION_MINUTES}",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            "transaction.state.log.num.partitions=4",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={isr}",
            # A cluster's nodes wait for each other's controllers up to 5 minutes, not the default 60 s: on a
            # loaded machine a peer's JVM may take longer than that to start (the first node then gave up).
            "initial.broker.registration.timeout.ms=300000",
            # Consumers join at once instead of waiting 3 s for peers that never come.
            "group.initial.rebalance.delay.ms=0",
            # Topics are created explicitly with their partition count; a typo must not create one.
            "auto.create.topics.enable=false",
            # Two cores: the defaults (3 network, 8 I/O threads) only add hand-offs between threads.
            "num.network.threads=1",
            "num.io.threads=2",
            "",
        ])

    def _java(self, main: str, *args: str, heap: str | None = None) -> list[str]:
        java = require_tool("java", "install a JDK 17+ (apt-get install openjdk-17-jre-headless) to run the Kafka broker")
        cmd = [java]
        if heap:
            cmd += [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                    # C1 only: the C2 compiler's warm-up costs a broker on two cores 0.2-0.4 of a core for
                    # minutes (measured: 0.5 -> 0.2 cores within 10 s at 100 msg/s, against 40 s and more).
                    "-XX:TieredStopAtLevel=1"]
        cmd += [
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp", str(libs_dir() / "*"), main, *args,
        ]
        return cmd

    def format_storage(self) -> None:
        """Format the KRaft storage on first start only (idempotent across restarts)."""
        props = self.data_dir / "server.properties"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props.write_text(self.server_properties())
        if (self.data_dir / "log" / "meta.properties").exists():
            return
        cluster_id = self.cluster_id or new_cluster_id()
        users = (self.scram_user, *self.client_users) if self.scram_user else ()
        scram = [arg for name, password in users
                 for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")]
        # A static quorum (controller.quorum.voters) is formatted as it is; a single node as its own quorum.
        quorum = [] if self.voters else ["--standalone"]
        result = subprocess.run(
            self._java("kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props), *quorum,
                       *scram),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise InfraError(f"Kafka storage format failed: {cause_line(result.stderr + chr(10) + result.stdout)}")

    def start(self, log_file: Path) -> subprocess.Popen:
        ensure_jars()
        self.format_storage()
        log = open(log_file, "ab")
        return subprocess.Popen(
            self._java("kafka.Kafka", str(self.data_dir / "server.properties"), heap=f"{self.heap_mb}m"),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def wait_listening(self, proc: subprocess.Popen, log_file: Path, timeout: float = 90) -> None:
        """Until this broker process itself listens on its client port. If it exits first, the cause line of
        its log: `PortTaken` when another process had taken one of its ports."""
        import psutil

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                output = log_file.read_text(errors="replace")[-20_000:] if log_file.exists() else ""
                error = PortTaken if bind_failed(output) else InfraError
                raise error(f"Kafka exited with {proc.returncode} on ports {self.port}/{self.controller_port}: "
                            f"{cause_line(output)} (log: {log_file})")
            try:
                listening = {c.laddr.port for c in psutil.Process(proc.pid).net_connections("tcp")
                             if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                listening = set()
            if self.port in listening:
                return
            time.sleep(0.2)
        raise InfraError(f"Kafka did not listen on {self.port} within {timeout:.0f}s (log: {log_file})")


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def start_node(make: Callable[[int, int], KafkaNode], log_file: Path, attempts: int = 3,
               timeout: float = 90) -> tuple[KafkaNode, subprocess.Popen]:
    """A broker on two fresh ports (`make(port, controller_port)` builds it), listening; started again on
    new ports when another process takes one of them before the broker binds it."""
    from .ports import free_ports, with_fresh_ports

    def attempt() -> tuple[KafkaNode, subprocess.Popen]:
        node = make(*free_ports(2))
        proc = node.start(log_file)
        try:
            node.wait_listening(proc, log_file, timeout)
        except BaseException:
            stop(proc)
            raise
        return node, proc

    return with_fresh_ports(attempt, attempts)


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL if it takes longer than `timeout`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def wait_ready(bootstrap: str, timeout: float = 60.0, brokers: int = 1, **client_options) -> int:
    """Wait until the cluster answers a metadata request naming at least `brokers` live brokers; how many
    it named."""
    from aiokafka.admin import AIOKafkaAdminClient

    import logging

    # "Unable to connect" is the expected answer while the broker starts: not worth a line each time.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    deadline = asyncio.get_running_loop().time() + timeout
    last: Exception | None = None
    while asyncio.get_running_loop().time() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, **client_options)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            registered = len(cluster.get("brokers", ()))
            if registered < brokers:
                raise InfraError(f"{registered} of {brokers} brokers registered")
            logging.getLogger("aiokafka").setLevel(logging.NOTSET)
            return registered
        except Exception as exc:  # the broker is still starting: any error means "not yet"
            last = exc
            await asyncio.sleep(0.3)
        finally:
            await admin.close()
    raise InfraError(f"Kafka at {bootstrap} did not answer metadata within {timeout:.0f}s ({last!r})")
