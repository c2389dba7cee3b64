"""Kafka least privilege on a real broker (SPEC section 9): the SCRAM stack's principals and ACLs, with the
StandardAuthorizer allowing nothing without an ACL. Who owns what is written out here from the SPEC, not
read from the policy under test: every principal is refused every topic it does not own, producing and
consuming, and may use the ones it does."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest

from cancelflow import stack_security
from cancelflow.infra import kafka
from shared import topics as t
from shared.kafka_connection import KafkaConnection
from shared.vocabulary import SERVICES

pytestmark = pytest.mark.integration

DLQ = t.dlq
# SPEC section 4: who reads (consumes) and who writes each topic. intake reads contracts.events for the
# quote and the cancel page; notifier for customer.erasure_requested (docs/security.md).
READS = {
    "intake": {t.CONTRACTS, t.SUBMISSIONS, t.DECISIONS, t.SETTLEMENTS, t.NOTIFICATIONS},
    "eligibility": {t.CONTRACTS, t.REQUESTS},
    "billing": {t.CONTRACTS, t.DECISIONS},
    "notifier": {t.CONTRACTS, t.REQUESTS, t.DECISIONS, t.SETTLEMENTS},
    "upstream": set(),
    "operator": set(t.all_with_dlq()),
}
WRITES = {
    "intake": {t.REQUESTS} | {DLQ(x) for x in READS["intake"]},
    # retention.offers (SPEC section 6): the offer a customer took, for the contract system to apply.
    "eligibility": {t.DECISIONS, t.RETENTION} | {DLQ(x) for x in READS["eligibility"]},
    "billing": {t.SETTLEMENTS} | {DLQ(x) for x in READS["billing"]},
    "notifier": {t.NOTIFICATIONS} | {DLQ(x) for x in READS["notifier"]},
    "upstream": {t.CONTRACTS, t.SUBMISSIONS},
    # dlq replay puts records back on the topics they were dead-lettered from: the consumed ones.
    "operator": {t.CONTRACTS, t.SUBMISSIONS, t.REQUESTS, t.DECISIONS, t.SETTLEMENTS, t.NOTIFICATIONS},
}


@pytest.fixture(scope="module")
def acl_broker():
    root = Path(tempfile.mkdtemp(prefix="cancelflow-acl-"))
    users = stack_security.scram_node_users(root / "security")
    node, proc = kafka.start_node(lambda port, controller: kafka.KafkaNode(
        root / "kafka", port, controller, heap_mb=256, partitions=1, **users), root / "kafka.log")

    def as_(principal: str) -> KafkaConnection:
        return stack_security.connection("scram", node.bootstrap, root / "security", principal)

    async def provision() -> None:
        options = as_(stack_security.BROKER).client_options()
        await kafka.wait_ready(node.bootstrap, 90, **options)
        await kafka.create_topics(node.bootstrap, t.all_with_dlq(), 1, **options)

    try:
        asyncio.run(provision())
        # The ACLs as a deployment creates them: `cancelflow kafka-acls`, as the broker's own principal.
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")} | as_(stack_security.BROKER).env()
        refused = subprocess.run([sys.executable, "-m", "cancelflow.cli", "kafka-acls"], capture_output=True,
                                 text=True, timeout=120, env=env | as_("operator").env())
        assert refused.returncode == 1 and "ClusterAuthorizationFailed" in refused.stdout, refused.stdout
        made = subprocess.run([sys.executable, "-m", "cancelflow.cli", "kafka-acls"], capture_output=True,
                              text=True, timeout=120, env=env)
        assert made.returncode == 0 and " ACLs on " in made.stdout, made.stdout + made.stderr
        yield as_
    finally:
        kafka.stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("principal", stack_security.CLIENT_PRINCIPALS)
async def test_each_principal_writes_only_the_topics_it_owns(acl_broker, principal):
    producer = AIOKafkaProducer(**acl_broker(principal).client_kwargs(), enable_idempotence=True, acks="all",
                                request_timeout_ms=10_000)
    await producer.start()
    try:
        for topic in t.all_with_dlq():
            if topic in WRITES[principal]:
                await producer.send_and_wait(topic, b"owned", key=b"k")
            else:
                with pytest.raises(TopicAuthorizationFailedError):
                    await asyncio.wait_for(producer.send_and_wait(topic, b"forged", key=b"k"), 30)
    finally:
        await producer.stop()


async def _put_one(acl_broker, topic: str) -> None:
    """One record on `topic`, written by a principal that owns it; by the broker's own principal when none
    does (retention.offers.dlq: nothing in the pipeline consumes retention.offers)."""
    owner = next((p for p in stack_security.CLIENT_PRINCIPALS if topic in WRITES[p]), stack_security.BROKER)
    producer = AIOKafkaProducer(**acl_broker(owner).client_kwargs(), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"record", key=b"k")
    finally:
        await producer.stop()


async def _fetch_error(conn: KafkaConnection, topic: str) -> int:
    """The broker's answer to a Fetch of the topic's first partition by `conn`'s principal (0: the records).
    Asked directly: a client without Describe is not even told where the partition is, so would only wait."""
    client = AIOKafkaClient(**conn.client_kwargs())
    await client.bootstrap()
    try:
        response = await client.send(client.get_random_node(),
                                     FetchRequest(100, 1, 1 << 20, 0, [(topic, [(0, 0, 1 << 20)])]))
        (_, partitions), = [(name, parts) for name, parts in (row[:2] for row in response.topics)]
        return partitions[0][1]
    finally:
        await client.close()


@pytest.mark.parametrize("principal", stack_security.CLIENT_PRINCIPALS)
async def test_each_principal_reads_only_the_topics_it_consumes(acl_broker, principal):
    for topic in t.all_with_dlq():
        await _put_one(acl_broker, topic)
    conn = acl_broker(principal)
    for topic in t.all_with_dlq():
        code = await _fetch_error(conn, topic)
        assert code == (0 if topic in READS[principal] else TopicAuthorizationFailedError.errno), (principal, topic)


@pytest.mark.parametrize("principal", SERVICES)
async def test_a_service_joins_only_its_own_consumer_group(acl_broker, principal):
    topic = sorted(READS[principal])[0]
    other = next(s for s in ("intake", "eligibility", "billing", "notifier") if s != principal)
    await _put_one(acl_broker, topic)
    conn = acl_broker(principal)

    def consumer(group: str) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(topic, **conn.client_kwargs(), group_id=group, auto_offset_reset="earliest",
                                enable_auto_commit=False)

    own = consumer(principal)
    await own.start()
    try:
        assert (await asyncio.wait_for(own.getone(), 30)).topic == topic
    finally:
        await own.stop()
    stranger = consumer(other)
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            await stranger.start()
    finally:
        await stranger.stop()


def test_only_the_broker_itself_is_a_super_user_and_every_principal_is_covered(tmp_path):
    assert set(READS) == set(WRITES) == set(stack_security.CLIENT_PRINCIPALS)
    users = stack_security.scram_node_users(tmp_path / "security")
    props = kafka.KafkaNode(tmp_path, 1, 2, **users).server_properties()
    assert "super.users=User:broker\n" in props and "allow.everyone.if.no.acl.found=false" in props
    assert "StandardAuthorizer" in props and "CONTROLLER:SASL_PLAINTEXT" in props  # no anonymous controller
    assert {name for name, _ in users["client_users"]} == set(stack_security.CLIENT_PRINCIPALS)
    assert len({password for _, password in users["client_users"]} | {users["scram_user"][1]}) == 7
    assert (tmp_path / "security" / "principals.json").stat().st_mode & 0o777 == 0o600
