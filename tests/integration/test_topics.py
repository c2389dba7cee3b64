"""Topic retention on the real broker (SPEC section 8): the stack creates every topic with the policy;
`cancelflow topics` reports a topic whose settings differ and `--fix` applies the policy, keeping the
topic's other settings."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from cancelflow import kafka_clients
from cancelflow.infra import topic_admin, topic_policy
from cancelflow.infra.topic_policy import DAY_MS
from shared import topics

pytestmark = pytest.mark.integration


def _security(bootstrap: str) -> dict:
    return kafka_clients.as_connection(bootstrap).client_options()


async def _configs(bootstrap: str, topic: str) -> dict[str, str]:
    admin = kafka_clients.admin(bootstrap)  # the security settings too (the SASL compose stack)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        return {entry[0]: entry[1] for entry in response.resources[0][4]}
    finally:
        await admin.close()


async def _alter(bootstrap: str, topic: str, configs: dict[str, str]) -> None:
    admin = kafka_clients.admin(bootstrap)  # the security settings too (the SASL compose stack)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
    finally:
        await admin.close()


async def _brokers(bootstrap: str) -> int:
    """The cluster's size: the policy's replication and min.insync.replicas depend on it (the compose
    cluster overlay has 3 nodes; `cancelflow topics` is told with --brokers, as its compose service is)."""
    admin = kafka_clients.admin(bootstrap)
    await admin.start()
    try:
        return len((await admin.describe_cluster())["brokers"])
    finally:
        await admin.close()


async def _check(bootstrap: str, **policy) -> list[topic_admin.TopicDrift]:
    return await topic_admin.check_topics(bootstrap, topics.all_with_dlq(), brokers=await _brokers(bootstrap),
                                          **policy, **_security(bootstrap))


async def _cli(infra, *args: str) -> tuple[int, str]:
    env = os.environ | {"KAFKA_BOOTSTRAP_SERVERS": infra.bootstrap, "COLUMNS": "250", "NO_COLOR": "1"}
    env.pop("CANCELFLOW_TOPIC_RETENTION_DAYS", None)
    # No --brokers: the command asks the cluster its size (on the compose cluster overlay, 3).
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "cancelflow.cli", "topics", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode, out.decode()


async def test_every_topic_of_the_stack_has_the_policy(infra):
    if infra.stack is None:
        pytest.skip("an external broker's topics were made by whoever runs it")
    assert await _check(infra.bootstrap) == []
    contracts = await _configs(infra.bootstrap, topics.CONTRACTS)
    assert contracts["retention.ms"] == "-1" and contracts["retention.bytes"] == "-1"
    for topic in (topics.REQUESTS, topics.NOTIFICATIONS):
        assert (await _configs(infra.bootstrap, topic))["retention.ms"] == str(400 * DAY_MS)
    dlq = await _configs(infra.bootstrap, topics.dlq(topics.CONTRACTS))
    assert dlq["retention.ms"] == str(30 * DAY_MS) and dlq["max.message.bytes"] == str(3 * 1024 * 1024)


async def test_topics_reports_a_topic_with_other_settings_and_fix_applies_the_policy(infra):
    topic = topics.dlq(topics.NOTIFICATIONS)
    # As an older version (or an operator) left it: the broker's 7 days, and a setting of its own.
    await _alter(infra.bootstrap, topic, {"retention.ms": str(7 * DAY_MS), "max.message.bytes": str(3 * 1024 * 1024),
                                          "segment.ms": str(3 * DAY_MS)})
    try:
        code, out = await _cli(infra)
        assert code == 2, out
        assert topic in out and "retention.ms" in out and str(7 * DAY_MS) in out and str(30 * DAY_MS) in out
        assert "--fix" in out
        assert (await _configs(infra.bootstrap, topic))["retention.ms"] == str(7 * DAY_MS)  # reported, not changed

        code, out = await _cli(infra, "--fix")
        assert code == 0, out
        after = await _configs(infra.bootstrap, topic)
        assert after["retention.ms"] == str(30 * DAY_MS)
        assert after["segment.ms"] == str(3 * DAY_MS)  # the topic's own other setting is kept
        assert await _check(infra.bootstrap) == []
        code, out = await _cli(infra)
        assert code == 0 and "differ" not in out, out
    finally:
        # The policy's whole set (AlterConfigs replaces the topic's own configs: min.insync.replicas too).
        await _alter(infra.bootstrap, topic, topic_policy.topic_configs(topic, brokers=await _brokers(infra.bootstrap)))


async def test_the_business_retention_is_a_setting(infra):
    code, out = await _cli(infra, "--retention-days", "500")
    assert code == 2, out  # every business topic but contracts.events now differs from a 500-day policy
    for topic in (topics.SUBMISSIONS, topics.REQUESTS, topics.DECISIONS, topics.SETTLEMENTS, topics.NOTIFICATIONS):
        assert topic in out
    assert f"{topics.CONTRACTS} " not in out.replace(f"{topics.CONTRACTS}.dlq", "")
    drifted = await _check(infra.bootstrap, business_retention_days=500)
    assert {d.topic for d in drifted} == {topics.SUBMISSIONS, topics.REQUESTS, topics.DECISIONS,
                                          topics.SETTLEMENTS, topics.NOTIFICATIONS, topics.RETENTION}
    code, out = await _cli(infra, "--retention-days", "0")
    assert code == 1 and "--retention-days" in out, out
