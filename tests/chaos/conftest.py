"""One stack for the chaos tests: three Kafka nodes (replication 3, min.insync.replicas 2) and two instances
of every service, as `cancelflow up --brokers 3 --instances 2` runs them, on a block of free ports."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from cancelflow.infra.ports import free_port_block
from cancelflow.stack import Ports, Stack, StackConfig
from shared.clock import FileClock

API_KEY = "chaos-key"


@pytest.fixture(scope="package")
def cluster_stack():
    root = Path(tempfile.mkdtemp(prefix="cancelflow-cluster-"))
    stack = Stack(StackConfig(root=root, ports=Ports.from_base(free_port_block(40)), api_keys=API_KEY,
                              clock_file=root / "clock", brokers=3, instances=2,
                              extra_env={"NOTIFIER_DISPATCH_INTERVAL_S": "0.1",
                                         # a killed notifier's unconfirmed mails go out again 10 s later
                                         "NOTIFIER_SENDING_LEASE_S": "10",
                                         "ELIGIBILITY_COMPLETION_INTERVAL_S": "0.2"}))
    try:
        stack.up()
        yield stack
    finally:
        stack.down()
        if os.environ.get("CANCELFLOW_KEEP_TEST_STACK") is None:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster_clock(cluster_stack):
    clock = FileClock(cluster_stack.config.clock_file)
    yield clock
    clock.path.unlink(missing_ok=True)


def pytest_collection_modifyitems(items):
    """The scheduled-work test first, on the fresh cluster: after the chaos run its clock moves would make
    every chaos request's reminders due too (tens of thousands at the full N). `cancelflow down` last."""
    here = [i for i, item in enumerate(items) if item.path.parent == Path(__file__).parent]

    def rank(item) -> int:
        return 0 if item.path.name == "test_scheduled_work.py" else 2 if item.name.startswith("test_down_") else 1

    ordered = sorted((items[i] for i in here), key=rank)
    for i, item in zip(here, ordered):
        items[i] = item
