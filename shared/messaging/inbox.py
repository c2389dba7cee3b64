"""The inbox (`processed_events`): an event id recorded here has had its effect; a redelivery is skipped.
It is written in the same transaction as the effect, so both commit or neither does."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from shared.events import Envelope

_ONE = ("INSERT INTO processed_events (event_id, event_type, topic, partition, \"offset\")"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING RETURNING true")
_MANY = ("INSERT INTO processed_events (event_id, event_type, topic, partition, \"offset\")"
         " SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[])"
         " ON CONFLICT (event_id) DO NOTHING RETURNING event_id")


async def record_all(conn: Any, seen: Sequence[tuple[Envelope, Any]]) -> set[uuid.UUID]:
    """Record the (envelope, record) pairs' event ids with one statement; the ids seen for the first time."""
    rows, ids = [], set()
    for envelope, record in seen:
        if envelope.event_id not in ids:
            ids.add(envelope.event_id)
            rows.append((envelope.event_id, envelope.event_type, record.topic, record.partition, record.offset))
    if not rows:
        return set()
    inserted = await conn.fetch(_MANY, *(list(column) for column in zip(*rows)))
    return {row["event_id"] for row in inserted}


async def record(conn: Any, envelope: Envelope, record_: Any) -> bool:
    """Record one event id; whether it was seen for the first time."""
    return bool(await conn.fetchval(_ONE, envelope.event_id, envelope.event_type, record_.topic,
                                    record_.partition, record_.offset))
