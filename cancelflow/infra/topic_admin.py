"""Topics on a broker against the policy (`topic_policy`): create the missing ones with it, report the
existing ones that differ, and apply it to them on request."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import InfraError
from .topic_policy import BUSINESS_RETENTION_DAYS, drift, replication_factor, topic_configs

# DescribeConfigs' config_source for a value set on the topic itself (v1+ of the response).
_TOPIC_CONFIG_SOURCE = 1
# A topic just created on a cluster is unknown to a broker the controller's metadata has not reached yet.
_UNKNOWN_TOPIC = 3


@dataclass(frozen=True)
class TopicDrift:
    topic: str
    differences: dict[str, tuple[str | None, str]]  # name -> (value on the broker, the policy's value)


def _admin(bootstrap: str, client_options: dict):
    from aiokafka.admin import AIOKafkaAdminClient

    return AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options)


async def create_topics(bootstrap: str, topics: Iterable[str], partitions: int, *,
                        business_retention_days: int = BUSINESS_RETENTION_DAYS, brokers: int = 1,
                        **client_options) -> list[str]:
    """Create the topics that are missing, with the policy's configs; the ones created. Existing topics
    are left as they are (`check_topics` reports them, `fix_topics` applies the policy)."""
    from aiokafka.admin import NewTopic

    admin = _admin(bootstrap, client_options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, num_partitions=partitions, replication_factor=replication_factor(brokers),
                            topic_configs=topic_configs(t, business_retention_days=business_retention_days,
                                                        brokers=brokers))
                   for t in dict.fromkeys(topics) if t not in existing]
        if missing:
            await admin.create_topics(missing)
        return [t.name for t in missing]
    finally:
        await admin.close()


def _entries(response) -> dict[str, dict[str, tuple[str, bool]]]:
    """{topic: {config name: (value, set on the topic itself)}} from a DescribeConfigs response."""
    version = response.API_VERSION
    out: dict[str, dict[str, tuple[str, bool]]] = {}
    for error_code, error_message, _type, name, entries in response.resources:
        if error_code:
            raise InfraError(f"describe configs of {name}: error {error_code} {error_message}")
        configs = {}
        for entry in entries:
            # v0: (name, value, read_only, is_default, is_sensitive); v1+: (..., config_source, ...).
            own = (not entry[3]) if version == 0 else entry[3] == _TOPIC_CONFIG_SOURCE
            configs[entry[0]] = (entry[1], own)
        out[name] = configs
    return out


async def _describe(admin, names: list[str], unknown_tries: int = 60) -> dict[str, dict[str, tuple[str, bool]]]:
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    out: dict[str, dict[str, tuple[str, bool]]] = {}
    for _ in range(unknown_tries):  # asked again while a topic listed is still unknown to the broker asked
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, n) for n in names])
        if not any(r[0] == _UNKNOWN_TOPIC for response in responses for r in response.resources):
            break
        await asyncio.sleep(0.5)
    for response in responses:
        out |= _entries(response)
    return out


async def check_topics(bootstrap: str, topics: Iterable[str], *,
                       business_retention_days: int = BUSINESS_RETENTION_DAYS, brokers: int = 1,
                       **client_options) -> list[TopicDrift]:
    """The existing topics among `topics` whose configs differ from the policy."""
    admin = _admin(bootstrap, client_options)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        names = [t for t in dict.fromkeys(topics) if t in existing]
        described = await _describe(admin, names) if names else {}
    finally:
        await admin.close()
    out = []
    for name in names:
        actual = {k: v for k, (v, _own) in described.get(name, {}).items()}
        wanted = topic_configs(name, business_retention_days=business_retention_days, brokers=brokers)
        if differences := drift(wanted, actual):
            out.append(TopicDrift(name, differences))
    return out


async def fix_topics(bootstrap: str, drifted: Iterable[TopicDrift], **client_options) -> None:
    """Apply the policy's values to the topics that differ. AlterConfigs replaces a topic's whole set of its
    own configs, so the ones set on the topic that the policy does not name are sent again as they are."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    drifted = list(drifted)
    if not drifted:
        return
    admin = _admin(bootstrap, client_options)
    await admin.start()
    try:
        described = await _describe(admin, [d.topic for d in drifted])
        resources = []
        for d in drifted:
            configs = {k: v for k, (v, own) in described.get(d.topic, {}).items() if own}
            configs |= {name: wanted for name, (_actual, wanted) in d.differences.items()}
            resources.append(ConfigResource(ConfigResourceType.TOPIC, d.topic, configs=configs))
        for response in await admin.alter_configs(resources):
            for error_code, error_message, _type, name in response.resources:
                if error_code:
                    raise InfraError(f"alter configs of {name}: error {error_code} {error_message}")
    finally:
        await admin.close()


async def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int, *,
                        business_retention_days: int = BUSINESS_RETENTION_DAYS, brokers: int = 1,
                        **client_options) -> list[TopicDrift]:
    """Create the missing topics and apply the policy to the existing ones that differ; those fixed."""
    names = list(topics)
    policy = {"business_retention_days": business_retention_days, "brokers": brokers}
    await create_topics(bootstrap, names, partitions, **policy, **client_options)
    drifted = await check_topics(bootstrap, names, **policy, **client_options)
    await fix_topics(bootstrap, drifted, **client_options)
    return drifted
