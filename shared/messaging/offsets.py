"""Committing consumed offsets a little after the records were processed, not after every batch.

A batch's offsets may be committed only once its database transaction committed (never before: that
would lose the records if the process died in between). Committing *later* is always safe: records
whose offsets were not committed yet come again after a crash or a rebalance, and the inbox
(processed_events) skips them. So the offsets of finished batches are kept here and committed every
`interval_s`, at a rebalance (before the partitions go to another consumer) and at shutdown: at low rates
one OffsetCommit per interval instead of one per record, which is a third of the broker's requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

log = logging.getLogger(__name__)


class OffsetCommitter(ConsumerRebalanceListener):
    """The processed offsets of one subscriber's consumer, committed in the background."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.consumer: AIOKafkaConsumer | None = None
        self.pending: dict[TopicPartition, int] = {}
        self.immediate = interval_s <= 0
        self._flusher: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    async def processed(self, message: Any, records: Sequence[Any]) -> None:
        """The batch in `message` is committed in the database: its offsets may go to Kafka."""
        consumer = getattr(message, "consumer", None)
        if self.immediate or not callable(getattr(consumer, "assignment", None)):
            await message.ack()  # FastStream commits what it handed out (also its in-memory test broker)
            return
        self.consumer = consumer
        for record in records:
            tp = TopicPartition(record.topic, record.partition)
            if record.offset + 1 > self.pending.get(tp, -1):
                self.pending[tp] = record.offset + 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(), name="offset-commit")

    async def _flush_later(self) -> None:
        # Until nothing is pending: offsets added while a commit was under way go with the next one.
        while self.pending:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def flush(self, partitions: set[TopicPartition] | None = None) -> None:
        """Commit what is pending now (only `partitions`' when given)."""
        async with self._lock:
            if self.consumer is None:
                return
            take = {tp: o for tp, o in self.pending.items() if partitions is None or tp in partitions}
            if not take:
                return
            for tp in take:
                del self.pending[tp]
            try:
                await self.consumer.commit(take)
            except Exception as exc:  # noqa: BLE001 - kept for the next try while still ours
                assigned = self.consumer.assignment()
                for tp, offset in take.items():
                    if tp in assigned and offset > self.pending.get(tp, -1):
                        self.pending[tp] = offset
                log.warning("offsets not committed (%s: %s); retried while the partitions are ours, else "
                            "their records are read again and skipped", type(exc).__name__, exc)

    async def close(self) -> None:
        """Commit what is pending and stop the timer (before the consumer stops)."""
        self.immediate = True  # batches finishing from now on commit at once
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
        await self.flush()

    # ConsumerRebalanceListener: commit before the partitions are handed to another consumer.
    async def on_partitions_revoked(self, revoked) -> None:
        await self.flush(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        pass
