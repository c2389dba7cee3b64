"""The report's reading of the event log, written once for every builder of figures (cancelflow.report,
cancelflow.retention_report): an envelope decoded into the few fields they use, a duplicate (the outbox may
publish an event twice) skipped, and what may still be matched kept for a window of event time only, so
that reading a year costs the memory of a week, not of the year."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

# A relay's republish, or the other half of one transaction's events, comes minutes later: a week is ample.
WINDOW = timedelta(days=7)


def parse_instant(value: Any) -> datetime | None:
    """An RFC 3339 string from an event -> aware datetime (UTC if it had no offset); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


class Recent:
    """Keys (each with a value) put within `WINDOW` of event time of the newest put; older ones are forgotten.
    A key put without a time is kept."""

    def __init__(self, window: timedelta = WINDOW) -> None:
        self.window = window
        self.items: dict[Any, tuple[datetime | None, Any]] = {}
        self.order: deque[tuple[datetime, Any]] = deque()
        self.newest: datetime | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, key: Any) -> bool:
        return key in self.items

    def get(self, key: Any, default: Any = None) -> Any:
        return self.items[key][1] if key in self.items else default

    def pop(self, key: Any, default: Any = None) -> Any:
        return self.items.pop(key)[1] if key in self.items else default

    def put(self, key: Any, value: Any, at: datetime | None) -> None:
        self.items[key] = (at, value)
        if at is None:
            return
        self.order.append((at, key))
        self.newest = at if self.newest is None or at > self.newest else self.newest
        while self.order[0][0] < self.newest - self.window:
            old_at, old = self.order.popleft()
            if old in self.items and self.items[old][0] == old_at:  # not put again since
                del self.items[old]

    def first(self, key: Any, at: datetime | None) -> bool:
        """True the first time `key` is seen within the window (and remembers it)."""
        if key in self.items:
            return False
        self.put(key, None, at)
        return True


@dataclass(frozen=True)
class Event:
    """An envelope about a request, decoded: what every builder of figures reads."""

    type: Any
    data: Mapping[str, Any]
    request_id: str
    occurred_at: datetime | None


class EnvelopeReader:
    """Envelopes (decoded JSON, any order) -> events about a request, each event once."""

    def __init__(self) -> None:
        self.seen = Recent()

    def read(self, env: Any) -> Event | None:
        """The event, or None for what is not an envelope, a duplicate (same event_id within the window) or an
        event about no request (a contract's)."""
        if not isinstance(env, Mapping) or not isinstance(env.get("data"), Mapping):
            return None
        at = parse_instant(env.get("occurred_at"))
        if not self.seen.first(env.get("event_id") or id(env), at):
            return None
        rid = env["data"].get("request_id")
        if not isinstance(rid, str):
            return None
        return Event(env.get("event_type"), env["data"], rid, at)
