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
from shared.kafka_connection import KafkaConnection
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


async def _round_trip_through_service_clients(settings: ServiceSettings, payload: bytes) -> None:
    """Create a topic, consume it with a FastStream broker and produce to it with the outbox's client
    options, all built from `settings` as the services build them."""
    options = settings.kafka_client_options()
    bootstrap = settings.kafka_bootstrap_servers
    await kafka.wait_ready(bootstrap, 90, **options)
    topic = f"secure-{uuid.uuid4().hex[:6]}"
    await kafka.create_topics(bootstrap, (topic,), 1, **options)
    broker = KafkaBroker(bootstrap, **settings.kafka.broker_kwargs())
    received: asyncio.Queue = asyncio.Queue()

    @broker.subscriber(topic, group_id=f"{topic}-group", auto_offset_reset="earliest")
    async def handle(body: bytes) -> None:
        await received.put(body)

    await broker.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **options)
    await producer.start()
    await producer.send_and_wait(topic, payload)
    await producer.stop()
    try:
        assert await asyncio.wait_for(received.get(), 30) == payload
    finally:
        await broker.stop()


async def test_services_talk_scram_when_configured_and_are_refused_with_a_wrong_password(scram_broker):
    await _round_trip_through_service_clients(_settings(scram_broker, "s3cret"), b"over scram")

    bad = AIOKafkaProducer(bootstrap_servers=scram_broker.bootstrap,
                           **_settings(scram_broker, "wrong").kafka_client_options())
    with pytest.raises(KafkaError):
        await bad.start()
    await bad.stop()


def _make_ca_and_broker_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway CA and a broker certificate for 127.0.0.1, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cancelflow test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    keystore, ca_file = directory / "broker.pem", directory / "ca.pem"
    keystore.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return keystore, ca_file


async def test_services_talk_tls_with_the_configured_ca_and_refuse_an_unknown_one(tmp_path):
    keystore, ca = _make_ca_and_broker_cert(tmp_path)
    node = kafka.KafkaNode(tmp_path / "kafka", free_port(), free_port(), heap_mb=256, tls=(keystore, ca))
    proc = node.start(tmp_path / "kafka.log")
    try:
        settings = ServiceSettings(KAFKA_BOOTSTRAP_SERVERS=node.bootstrap, KAFKA_SECURITY_PROTOCOL="SSL",
                                   KAFKA_SSL_CAFILE=str(ca))
        await _round_trip_through_service_clients(settings, b"over tls")

        untrusting = ServiceSettings(KAFKA_BOOTSTRAP_SERVERS=node.bootstrap, KAFKA_SECURITY_PROTOCOL="SSL")
        stranger = AIOKafkaProducer(bootstrap_servers=node.bootstrap, request_timeout_ms=5000,
                                    **untrusting.kafka_client_options())
        with pytest.raises(KafkaError):
            await stranger.start()
        await stranger.stop()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
