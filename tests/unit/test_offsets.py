"""The offset committer: offsets go to Kafka only after processing, a little later, and none is forgotten."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from aiokafka import TopicPartition

from shared.messaging.offsets import OffsetCommitter

T0, T1 = TopicPartition("t", 0), TopicPartition("t", 1)


class FakeConsumer:
    def __init__(self, fail: int = 0, slow: float = 0.0) -> None:
        self.commits: list[dict] = []
        self.fail = fail
        self.slow = slow
        self.assigned = {T0, T1}

    def assignment(self):
        return set(self.assigned)

    async def commit(self, offsets) -> None:
        await asyncio.sleep(self.slow)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("coordinator moved")
        self.commits.append(dict(offsets))


def batch(consumer, *records):
    return SimpleNamespace(consumer=consumer), [SimpleNamespace(topic=tp.topic, partition=tp.partition, offset=o)
                                                for tp, o in records]


async def test_offsets_are_committed_together_after_the_interval_as_next_offset_to_read():
    consumer, committer = FakeConsumer(), OffsetCommitter(0.05)
    await committer.processed(*batch(consumer, (T0, 4), (T0, 5), (T1, 9)))
    await committer.processed(*batch(consumer, (T0, 6)))
    assert consumer.commits == [], "not at once"
    await asyncio.sleep(0.15)
    assert consumer.commits == [{T0: 7, T1: 10}]


async def test_offsets_added_while_a_commit_is_under_way_are_committed_too():
    consumer, committer = FakeConsumer(slow=0.1), OffsetCommitter(0.02)
    await committer.processed(*batch(consumer, (T0, 1)))
    await asyncio.sleep(0.05)  # the first commit is on its way
    await committer.processed(*batch(consumer, (T0, 2)))
    await asyncio.sleep(0.4)
    assert consumer.commits == [{T0: 2}, {T0: 3}]


async def test_a_failed_commit_is_retried_for_partitions_still_assigned_only():
    consumer, committer = FakeConsumer(fail=1), OffsetCommitter(0.02)
    await committer.processed(*batch(consumer, (T0, 1), (T1, 1)))
    consumer.assigned = {T0}
    await asyncio.sleep(0.2)
    assert consumer.commits == [{T0: 2}]


async def test_a_revocation_commits_the_revoked_partitions_at_once_and_close_commits_the_rest():
    consumer, committer = FakeConsumer(), OffsetCommitter(10)
    await committer.processed(*batch(consumer, (T0, 3), (T1, 8)))
    await committer.on_partitions_revoked({T1})
    assert consumer.commits == [{T1: 9}]
    await committer.close()
    assert consumer.commits == [{T1: 9}, {T0: 4}]


async def test_without_a_real_consumer_or_with_no_interval_the_batch_is_acked_at_once():
    acks = []

    async def ack() -> None:
        acks.append(1)

    message = SimpleNamespace(consumer=object(), ack=ack)
    await OffsetCommitter(0.1).processed(message, [])
    await OffsetCommitter(0).processed(SimpleNamespace(consumer=FakeConsumer(), ack=ack), [])
    assert acks == [1, 1]
