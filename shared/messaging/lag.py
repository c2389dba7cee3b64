"""The consumer group's lag (end offset - committed offset) per partition, as a gauge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import metrics
from shared.kafka_connection import describe_partitions

log = logging.getLogger(__name__)


async def partitions_of(admin: AIOKafkaAdminClient, topic_names: Sequence[str]) -> list[TopicPartition]:
    """Every partition of the topics that exist (from the cluster's metadata), in order."""
    return sorted(TopicPartition(t, p) for t, ps in (await describe_partitions(admin, topic_names)).items() for p in ps)


async def lag_loop(*, service: str, group: str, topic_names: Sequence[str], bootstrap_servers: str,
                   client_options: dict[str, Any], interval_s: float = 5.0) -> None:
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_options)
        probe = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, **client_options)
        try:
            await admin.start()
            await probe.start()
            while True:
                tps = await partitions_of(admin, topic_names)
                committed = await admin.list_consumer_group_offsets(group)
                starts = await probe.beginning_offsets(tps) if tps else {}
                ends = await probe.end_offsets(tps) if tps else {}
                for tp in tps:
                    # Never committed: the group would start at the beginning of the partition.
                    done = committed[tp].offset if tp in committed and committed[tp].offset >= 0 else starts[tp]
                    metrics.LAG.labels(service, tp.topic, str(tp.partition)).set(max(ends[tp] - done, 0))
                await asyncio.sleep(interval_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the gauge goes stale, the service goes on
            log.debug("lag not measured: %s", exc)
            await asyncio.sleep(interval_s)
        finally:
            await probe.stop()
            await admin.close()
