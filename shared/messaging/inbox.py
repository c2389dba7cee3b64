"""The inbox (`processed_events`): an event id recorded here has had its effect; a redelivery is skipped.
It is written in the same transaction as the effect, so both commit or neither does.

Ids are kept for a window (`inbox_window_days`, longer than any redelivery: a relay's republish after a
crash, a rebalance's re-read) and then pruned by `pruning_loop`, oldest first, in small batches: each batch is
its own short transaction that skips rows another transaction holds, so consumers never wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from shared.clock import Clock
from shared.events import Envelope

log = logging.getLogger(__name__)

_ONE = ("INSERT INTO processed_events (event_id, event_type, topic, partition, \"offset\", processed_at)"
        " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING RETURNING true")
_MANY = ("INSERT INTO processed_events (event_id, event_type, topic, partition, \"offset\", processed_at)"
         " SELECT *, $6::timestamptz FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[])"
         " ON CONFLICT (event_id) DO NOTHING RETURNING event_id")
# By id through the primary key: `event_id IN (subquery)` was planned as a hash of the whole window, a
# sequential scan of the inbox for every batch (pg_stat_user_tables in issue 15's soak).
_PRUNE = ("DELETE FROM processed_events WHERE event_id = ANY(ARRAY("
          " SELECT event_id FROM processed_events WHERE processed_at < $1"
          " ORDER BY processed_at LIMIT $2 FOR UPDATE SKIP LOCKED))")


async def record_all(conn: Any, seen: Sequence[tuple[Envelope, Any]], now: datetime) -> set[uuid.UUID]:
    """Record the (envelope, record) pairs' event ids with one statement; the ids seen for the first time."""
    rows, ids = [], set()
    for envelope, record in seen:
        if envelope.event_id not in ids:
            ids.add(envelope.event_id)
            rows.append((envelope.event_id, envelope.event_type, record.topic, record.partition, record.offset))
    if not rows:
        return set()
    inserted = await conn.fetch(_MANY, *(list(column) for column in zip(*rows)), now)
    return {row["event_id"] for row in inserted}


async def record(conn: Any, envelope: Envelope, record_: Any, now: datetime) -> bool:
    """Record one event id; whether it was seen for the first time."""
    return bool(await conn.fetchval(_ONE, envelope.event_id, envelope.event_type, record_.topic,
                                    record_.partition, record_.offset, now))


async def prune(pool: Any, before: datetime, *, batch: int = 1000, pause_s: float = 0.05) -> int:
    """Delete the ids recorded before `before`, `batch` at a time, each batch its own transaction; how many."""
    total = 0
    while True:
        status = await pool.execute(_PRUNE, before, batch)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep(pause_s)  # let the consumers' transactions in between batches


async def pruning_loop(pool: Any, clock: Clock, *, window: timedelta, interval_s: float, batch: int) -> None:
    """Every `interval_s`, prune what is older than `window` by the service's clock; errors wait a turn."""
    while True:
        try:
            pruned = await prune(pool, clock.now() - window, batch=batch)
            if pruned:
                log.info("inbox: %d event ids older than the window pruned", pruned)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the database may be restarting: try again next turn
            log.warning("inbox pruning failed; next try in %.0f s", interval_s, exc_info=True)
        await asyncio.sleep(interval_s)
