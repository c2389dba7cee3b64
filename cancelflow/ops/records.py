"""Kafka records as the operator commands see them: decoded as far as they go, personal data masked."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from shared import topics
from shared.pii import mask_pii

from ..kafka_clients import Target, read_topics
from ..report_events import parse_instant


@dataclass(frozen=True)
class Record:
    """One Kafka record, decoded as far as it goes: `envelope` is the JSON object, or None."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, str] = field(default_factory=dict)
    envelope: Mapping[str, Any] | None = None
    raw_headers: tuple[tuple[str, bytes], ...] = ()  # as on the wire: bytes, repeated keys kept

    @property
    def is_dead_letter(self) -> bool:
        return self.topic.endswith(topics.DLQ_SUFFIX)

    @property
    def data(self) -> Mapping[str, Any]:
        data = (self.envelope or {}).get("data")
        return data if isinstance(data, dict) else {}

    @property
    def event_type(self) -> str | None:
        value = (self.envelope or {}).get("event_type")
        return value if isinstance(value, str) else None

    @property
    def kafka_time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp_ms / 1000, timezone.utc)


def decode_record(r: Any) -> Record:
    """An aiokafka ConsumerRecord -> Record (never raises: poison is shown, not hidden)."""
    headers = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)) for k, v in (r.headers or ())}
    envelope = None
    if r.value:
        try:
            obj = orjson.loads(r.value)
            envelope = obj if isinstance(obj, dict) else None
        except orjson.JSONDecodeError:
            envelope = None
    raw = tuple((k, v if isinstance(v, bytes) else str(v).encode()) for k, v in (r.headers or ()))
    return Record(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, headers, envelope, raw)


def event_time(record: Record) -> datetime:
    """When it happened: a dead letter at `dlq.failed_at`, an event at its `occurred_at`, else the log time."""
    if record.is_dead_letter:
        return parse_instant(record.headers.get("dlq.failed_at")) or record.kafka_time
    return parse_instant((record.envelope or {}).get("occurred_at")) or record.kafka_time


async def read_records(target: Target, topic_names: Iterable[str], timeout: float = 20) -> list[Record]:
    """Every record now on these topics (missing topics are skipped), decoded."""
    return [decode_record(r) for r in await read_topics(target, topic_names, timeout)]


# --- masking ---------------------------------------------------------------------------------------

def _mask_value(value: Any) -> Any:
    if not isinstance(value, str) or not value:
        return value
    masked = mask_pii(value)
    return masked if masked != value else "***"


def mask_personal_data(obj: Any) -> Any:
    """A copy with `customer.email` / `customer.phone` masked wherever a `customer` object appears."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key == "customer" and isinstance(value, dict):
                value = {k: (_mask_value(v) if k in ("email", "phone") else mask_personal_data(v))
                         for k, v in value.items()}
            else:
                value = mask_personal_data(value)
            out[key] = value
        return out
    if isinstance(obj, list):
        return [mask_personal_data(v) for v in obj]
    return obj
