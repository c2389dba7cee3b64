"""What every topic is created with (SPEC section 8): how long it keeps its records, and how large one may be.

One pure function, `topic_configs(topic, ...)`, is the whole policy: the stack, `cancelflow topics` and docker
compose (which runs `cancelflow topics`) create topics with it, and `cancelflow topics` compares existing
topics against it. Settings that depend on the cluster (replication, min.insync.replicas) extend the same
function through `brokers`.
"""

from __future__ import annotations

from collections.abc import Mapping

from shared import topics

DAY_MS = 86_400_000
FOREVER = -1
# The source of truth: every projection (eligibility's and billing's contracts) is rebuilt from it.
SOURCE_OF_TRUTH = frozenset({topics.CONTRACTS})
BUSINESS_RETENTION_DAYS = 400  # a year of report and trace history, plus a month's margin
DLQ_RETENTION_DAYS = 30
# A dead letter carries the original message plus headers: room for a 1 MiB original.
DLQ_MAX_MESSAGE_BYTES = 3 * 1024 * 1024


def retention_days_ms(days: int) -> int:
    """`retention.ms` for a number of days; -1 keeps every record."""
    if days == FOREVER:
        return FOREVER
    if days < 1:
        raise ValueError(f"retention days: {days} (a positive number of days, or -1 for forever)")
    return days * DAY_MS


def topic_configs(topic: str, *, business_retention_days: int = BUSINESS_RETENTION_DAYS,
                  brokers: int = 1) -> dict[str, str]:
    """The topic-level configs `topic` is created with and checked against (`brokers`: the cluster's size)."""
    if topic.endswith(topics.DLQ_SUFFIX):
        retention = DLQ_RETENTION_DAYS * DAY_MS
    elif topic in SOURCE_OF_TRUTH:
        retention = FOREVER
    else:
        retention = retention_days_ms(business_retention_days)
    configs = {
        "cleanup.policy": "delete",
        "retention.ms": str(retention),
        # Time alone bounds a topic: no size limit drops records early.
        "retention.bytes": "-1",
    }
    # A write is acknowledged (acks=all) once two replicas have it on a cluster; a replica that missed
    # writes never becomes leader.
    configs["min.insync.replicas"] = str(min_insync_replicas(brokers))
    configs["unclean.leader.election.enable"] = "false"
    if topic.endswith(topics.DLQ_SUFFIX):
        configs["max.message.bytes"] = str(DLQ_MAX_MESSAGE_BYTES)
    return configs


def min_insync_replicas(brokers: int = 1) -> int:
    """Replicas that must have a write before it is acknowledged: 2 once there are 3 copies."""
    return 2 if replication_factor(brokers) >= 3 else 1


def replication_factor(brokers: int = 1) -> int:
    """How many copies of each partition a topic gets on a cluster of `brokers`."""
    return min(brokers, 3)


def drift(wanted: Mapping[str, str], actual: Mapping[str, str]) -> dict[str, tuple[str | None, str]]:
    """The configs of `wanted` that `actual` does not have: {name: (actual value or None, wanted value)}."""
    return {name: (actual.get(name), value) for name, value in wanted.items() if actual.get(name) != value}
