"""A port taken by another process between the choice and the bind: the broker starts again on new ports."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from cancelflow.infra import kafka
from cancelflow.infra.ports import free_ports

pytestmark = pytest.mark.integration


def test_kafka_starts_on_new_ports_when_another_process_took_its_port():
    root = Path(tempfile.mkdtemp(prefix="cancelflow-ports-"))
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", free_ports(1)[0]))
    squatter.listen()
    taken = squatter.getsockname()[1]
    chosen: list[tuple[int, int]] = []

    def make(port: int, controller: int) -> kafka.KafkaNode:
        if not chosen:
            port = taken  # as if another process had bound it right after our choice
        chosen.append((port, controller))
        return kafka.KafkaNode(root / "kafka", port, controller, heap_mb=256, partitions=1)

    try:
        node, proc = kafka.start_node(make, root / "kafka.log")
        try:
            assert len(chosen) == 2 and chosen[0][0] == taken and node.port not in (taken, chosen[0][1])
            assert proc.poll() is None
        finally:
            kafka.stop(proc)
    finally:
        squatter.close()
        shutil.rmtree(root, ignore_errors=True)
