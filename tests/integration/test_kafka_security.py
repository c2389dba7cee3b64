"""SASL/SCRAM through settings: a real broker that requires SCRAM-SHA-512, and the services' own client
options (outbox producer) and FastStream broker security built from ServiceSettings."""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from faststream.kafka import KafkaBroker

from cancelflow.infra import kafka
from cancelflow.infra.ports import free_port
from shared.service import _broker_security
from shared.settings import ServiceSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def scram_broker():
    root = Path(tempfile.mkdtemp(prefix="cancelflow-sasl-"))
    node = kafka.KafkaNode(root, free_port(), free_port(), heap_mb=256, scram_user=("cancelflow", "s3cret"))
    proc = node.start(root / "kafka.log")
    try:
        yield node
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except Exception:  # noqa: BLE001
            proc.kill()
        shutil.rmtree(root, ignore_errors=True)


def _settings(node, password: str) -> ServiceSettings:
    return ServiceSettings(KAFKA_BOOTSTRAP_SERVERS=node.bootstrap, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                           KAFKA_SASL_MECHANISM="SCRAM-SHA-512", KAFKA_SASL_USERNAME="cancelflow",
                           KAFKA_SASL_PASSWORD=password)


async def test_services_talk_scram_when_configured_and_are_refused_with_a_wrong_password(scram_broker):
    good = _settings(scram_broker, "s3cret")
    options = good.kafka_client_options()
    await kafka.wait_ready(scram_broker.bootstrap, 90, **options)
    topic = f"sasl-{uuid.uuid4().hex[:6]}"
    await kafka.create_topics(scram_broker.bootstrap, (topic,), 1, **options)

    broker = KafkaBroker(good.kafka_bootstrap_servers, **_broker_security(good))
    received: asyncio.Queue = asyncio.Queue()

    @broker.subscriber(topic, group_id="sasl-test", auto_offset_reset="earliest")
    async def handle(body: bytes) -> None:
        await received.put(body)

    await broker.start()
    producer = AIOKafkaProducer(bootstrap_servers=good.kafka_bootstrap_servers, **options)
    await producer.start()
    await producer.send_and_wait(topic, b"over scram")
    await producer.stop()
    assert await asyncio.wait_for(received.get(), 30) == b"over scram"
    await broker.stop()

    bad = AIOKafkaProducer(bootstrap_servers=scram_broker.bootstrap,
                           **_settings(scram_broker, "wrong").kafka_client_options())
    with pytest.raises(KafkaError):
        await bad.start()
    await bad.stop()
