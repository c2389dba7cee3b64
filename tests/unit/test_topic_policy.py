"""The topic policy as a table: which topic keeps its records how long."""

import pytest

from cancelflow.infra.topic_policy import DAY_MS, drift, replication_factor, retention_days_ms, topic_configs
from shared import topics


@pytest.mark.parametrize("topic, retention_ms", [
    (topics.CONTRACTS, -1),
    (topics.SUBMISSIONS, 400 * DAY_MS),
    (topics.REQUESTS, 400 * DAY_MS),
    (topics.DECISIONS, 400 * DAY_MS),
    (topics.SETTLEMENTS, 400 * DAY_MS),
    (topics.NOTIFICATIONS, 400 * DAY_MS),
    (topics.dlq(topics.CONTRACTS), 30 * DAY_MS),
    (topics.dlq(topics.REQUESTS), 30 * DAY_MS),
])
def test_retention_per_topic(topic, retention_ms):
    configs = topic_configs(topic)
    assert configs["retention.ms"] == str(retention_ms)
    assert configs["retention.bytes"] == "-1" and configs["cleanup.policy"] == "delete"
    assert ("max.message.bytes" in configs) == topic.endswith(".dlq")


def test_business_retention_is_a_setting_that_never_touches_contracts_or_dlq():
    assert topic_configs(topics.REQUESTS, business_retention_days=730)["retention.ms"] == str(730 * DAY_MS)
    assert topic_configs(topics.REQUESTS, business_retention_days=-1)["retention.ms"] == "-1"
    assert topic_configs(topics.CONTRACTS, business_retention_days=730)["retention.ms"] == "-1"
    assert topic_configs(topics.dlq(topics.REQUESTS), business_retention_days=730)["retention.ms"] == str(30 * DAY_MS)
    with pytest.raises(ValueError, match="retention days"):
        retention_days_ms(0)


def test_drift_names_what_differs_only():
    wanted = {"retention.ms": "-1", "retention.bytes": "-1"}
    assert drift(wanted, {"retention.ms": "604800000", "retention.bytes": "-1", "segment.ms": "1"}) == {
        "retention.ms": ("604800000", "-1")}
    assert drift(wanted, {}) == {"retention.ms": (None, "-1"), "retention.bytes": (None, "-1")}
    assert replication_factor(1) == 1 and replication_factor(3) == 3
